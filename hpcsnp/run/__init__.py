"""What a run does with its folds: plans and launches them (`cv`), merges them (`reduce`,
`ensemble`, `ranking`, `loci`), draws and queries the results (`report`) and predicts new
lines from them (`predict`)."""

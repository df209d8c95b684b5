"""The linear mixed models: GBLUP in two encodings and RKHS as per-fold baselines and refits
(`baseline`), the baselines refitted on every phenotyped line for new lines (`refit`), and
the mixed-model GWAS (`gwas`).  numpy and scipy only."""

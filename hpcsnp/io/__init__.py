"""Reading users' files into a store and back: delimited text (`text`), VCF and PLINK
(`genotype_files`), phenotype and group tables (`pheno`), new lines aligned to a trained
store (`newlines`), and the simulator that writes such files (`simulate`).  No TensorFlow."""

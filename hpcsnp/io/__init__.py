"""Reading users' files into a store and back: delimited text (`text`), VCF (`vcf`) and PLINK
(`plink`) sources written to a store by `genotype_files`, phenotype and group tables (`pheno`),
new lines aligned to a trained store (`newlines`), and the simulator that writes such files
(`simulate`).  A new input format is one module here: a source `genotype_files` (or `text`)
writes, plus its test.  No TensorFlow."""

"""The linear mixed models: GBLUP in two encodings and RKHS as per-fold baselines and refits
(`baseline`), and the mixed-model GWAS (`gwas`).  numpy and scipy only."""

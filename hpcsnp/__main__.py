from hpcsnp.cli import main

main()

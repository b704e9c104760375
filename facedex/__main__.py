from facedex.cli import main

main()

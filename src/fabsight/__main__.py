from fabsight.cli.main import main

main()

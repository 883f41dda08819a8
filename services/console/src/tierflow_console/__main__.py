from tierflow_console.bootstrap import main

main()

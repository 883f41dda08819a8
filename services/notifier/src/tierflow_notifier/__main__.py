from tierflow_notifier.bootstrap import main

main()

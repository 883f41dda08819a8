from tierflow_classifier.bootstrap import main

main()

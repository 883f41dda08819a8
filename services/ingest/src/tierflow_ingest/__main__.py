from tierflow_ingest.bootstrap import main

main()

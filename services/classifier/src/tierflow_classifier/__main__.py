from tierflow_classifier.bootstrap import main

# Guarded: a simulation's process (spawned) imports the main module again.
if __name__ == "__main__":
    main()

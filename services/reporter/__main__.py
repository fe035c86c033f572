from services.reporter.entrypoint import main

main()

from services.scheduler.entrypoint import main

main()

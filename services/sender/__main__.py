from services.sender.entrypoint import main

main()

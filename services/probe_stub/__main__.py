from services.probe_stub.entrypoint import main

main()

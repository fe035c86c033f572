from services.api.entrypoint import main

raise SystemExit(main())

from .knetlink.commands import main

raise SystemExit(main())

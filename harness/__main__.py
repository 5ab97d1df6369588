from harness.knetlink.commands import main

raise SystemExit(main())

from racnn.cli import main

raise SystemExit(main())

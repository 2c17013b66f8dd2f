from medsegrwkv.cli.main import main

raise SystemExit(main())

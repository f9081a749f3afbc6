from vfiomond.cli import main

raise SystemExit(main())

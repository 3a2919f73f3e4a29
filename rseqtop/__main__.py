from rseqtop.cli import main

raise SystemExit(main())

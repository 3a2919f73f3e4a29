from rseqtop.commands.cli import main

raise SystemExit(main())

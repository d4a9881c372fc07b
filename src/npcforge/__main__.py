from npcforge.cli import main

raise SystemExit(main())

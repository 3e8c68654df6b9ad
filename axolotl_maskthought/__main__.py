from axolotl_maskthought.cli import main

raise SystemExit(main())

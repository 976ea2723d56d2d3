from sentinel_stream.cli import main

raise SystemExit(main())

"""``python -m vendors_fake --config jobline.toml --profile flaky`` = ``jobline fake-vendors``."""

from vendors_fake.runner import main

raise SystemExit(main())

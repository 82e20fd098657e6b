"""Developer tools of the wshub repository; not part of the installed package."""

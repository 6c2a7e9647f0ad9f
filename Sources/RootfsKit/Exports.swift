// The floors below, re-exported: a user of RootfsKit (the CLI) sees their
// public API without importing them one by one.
@_exported import RootfsImage
@_exported import RootfsSupport

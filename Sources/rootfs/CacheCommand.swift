import ArgumentParser
import Foundation
import RootfsKit

/// `rootfs cache list|prune|path`: the cache shared by builds (CacheDirectory, TreeCache).
struct CacheCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cache",
        abstract: "List, prune or locate the cache shared by builds (package downloads and finished trees).",
        subcommands: [List.self, Prune.self, Path.self])

    struct Location: ParsableArguments {
        @Option(name: .customLong("cache-dir"), help: ArgumentHelp("The cache (ROOTFS_CACHE_DIR; default: $XDG_CACHE_HOME/rootfs, or /var/cache/rootfs as root).", valueName: "DIR"))
        var cacheDir: String?
        var cache: CacheDirectory { CacheDirectory.resolve(option: cacheDir, environment: ProcessInfo.processInfo.environment) }
    }

    struct Path: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the cache directory.")
        @OptionGroup var location: Location
        func run() async throws { print(location.cache.root) }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the cached trees (size, creation, last use) and the package caches (size).")
        @OptionGroup var location: Location
        @Flag(help: "Print one JSON document.") var json = false

        struct Report: Encodable {
            var directory: String
            var trees: [TreeCache.Listed]
            var packages: [PackageCache]
        }
        struct PackageCache: Encodable { var name: String; var bytes: Int64 }

        func run() async throws {
            let cache = location.cache
            let trees = TreeCache(cache: cache).list()
            let packageRoot = cache.root + "/packages"
            let packages = ((try? FileManager.default.contentsOfDirectory(atPath: packageRoot)) ?? []).sorted().map {
                PackageCache(name: $0, bytes: CacheCommand.bytes(below: packageRoot + "/" + $0))
            }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(Report(directory: cache.root, trees: trees, packages: packages)), as: UTF8.self))
                return
            }
            print("cache: \(cache.root)")
            let now = Int(Date().timeIntervalSince1970)
            for t in trees {
                print("tree \(t.key.prefix(16))  \(t.distro) \(t.osVersion) \(t.architecture)  \(formatBytes(t.bytes))  "
                      + "created \(CacheCommand.age(now - t.created)) ago, last used \(CacheCommand.age(now - t.lastUsed)) ago")
            }
            for p in packages { print("packages \(p.name)  \(formatBytes(p.bytes))") }
            if trees.isEmpty && packages.isEmpty { print("(empty)") }
        }
    }

    struct Prune: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove cached trees (all, or those last used longer ago than --older-than); entries a build is reading are kept.")
        @OptionGroup var location: Location
        @Option(name: .customLong("older-than"), help: ArgumentHelp("Only entries last used longer ago than this: 30d, 12h, 45m, 90s or plain seconds.", valueName: "D"))
        var olderThan: String?
        @Flag(help: "Also remove the package caches (downloaded packages).") var packages = false

        func run() async throws {
            let (olderThan, packages, cache) = (olderThan, packages, location.cache)
            try await CommandRunner.run {
                let seconds = try olderThan.map { try CacheCommandDuration.parse($0) }
                var inUse: [String] = []
                let removed = TreeCache(cache: cache).prune(olderThan: seconds) { inUse.append($0) }
                for key in removed { print("removed tree \(key.prefix(16))") }
                for key in inUse { print("kept tree \(key.prefix(16)): a build is reading it") }
                if packages { FS.remove(cache.root + "/packages"); print("removed the package caches") }
                if removed.isEmpty && inUse.isEmpty && !packages { print("nothing to remove") }
            }
        }
    }

    static func age(_ seconds: Int) -> String {
        let s = max(0, seconds)
        if s < 120 { return "\(s) s" }
        if s < 7200 { return "\(s / 60) min" }
        if s < 172_800 { return "\(s / 3600) h" }
        return "\(s / 86400) d"
    }

    static func bytes(below path: String) -> Int64 {
        var total: Int64 = 0
        for name in FileManager.default.subpaths(atPath: path) ?? [] {
            var st = stat()
            if lstat(path + "/" + name, &st) == 0, st.st_mode & S_IFMT == S_IFREG { total += Int64(st.st_size) }
        }
        return total
    }
}

import Foundation

/// The cache shared by builds (`--cache-dir DIR`, `ROOTFS_CACHE_DIR`; by default
/// `$XDG_CACHE_HOME/rootfs`, `~/.cache/rootfs`, or `/var/cache/rootfs` as root).
///
///     DIR/packages/<os>-<version>-<arch>/   the package manager's downloads (and apt's lists), for the hook
///
/// Nothing of it reaches the guest or the outputs: the hook copies packages in before
/// its package manager runs and out afterwards, and the bootstrap tool's own clean-up
/// removes them from the tree (outputs are the same bytes with a cold, warm or no cache).
public struct CacheDirectory: Sendable, Equatable {
    public var root: String

    public init(root: String) { self.root = root }

    /// Where the cache is: the flag, then ROOTFS_CACHE_DIR, then the per-user or system default.
    public static func resolve(option: String?, environment env: [String: String], isRoot: Bool = getuid() == 0) -> CacheDirectory {
        if let option, !option.isEmpty { return CacheDirectory(root: FS.absolute(option)) }
        if let dir = env["ROOTFS_CACHE_DIR"], !dir.isEmpty { return CacheDirectory(root: FS.absolute(dir)) }
        if isRoot { return CacheDirectory(root: "/var/cache/rootfs") }
        if let xdg = env["XDG_CACHE_HOME"], xdg.hasPrefix("/") { return CacheDirectory(root: xdg + "/rootfs") }
        let home = env["HOME"].flatMap { $0.hasPrefix("/") ? $0 : nil } ?? NSHomeDirectory()
        return CacheDirectory(root: home + "/.cache/rootfs")
    }

    /// The package cache of one distro release and architecture. Releases and architectures
    /// are kept apart: their packages share names but not contents.
    public func packageDirectory(osName: String, osVersion: String, architecture: String) -> String {
        root + "/packages/" + [osName, osVersion.isEmpty ? "default" : osVersion, architecture]
            .map(Self.safeName).joined(separator: "-")
    }

    /// Letters, digits, `.`, `_` and `+`; anything else becomes `_` (a name from config.sh never makes a path).
    static func safeName(_ text: String) -> String {
        let mapped = String(text.unicodeScalars.map { c -> Character in
            let ok = (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || "._+".unicodeScalars.contains(c)
            return ok ? Character(c) : "_"
        })
        return mapped.isEmpty || mapped.allSatisfy({ $0 == "." }) ? "_" : mapped
    }

    /// Makes `path` (and its parents) and checks a file can be made in it. Nil when it can
    /// be used, else why not (the caller warns and builds without the cache).
    public static func prepare(_ path: String) -> String? {
        // mmdebstrap's sync-in/sync-out split their arguments at blanks.
        if path.contains(where: { $0 == " " || $0 == "\t" || $0 == "\n" }) {
            return "its path \(path) holds a blank, which the package tools cannot take"
        }
        // As root: the directories already there are judged before anything is made in them (a
        // directory another user owns could hold a link that sends the new ones elsewhere), and
        // the made ones after (their mode is the umask's).
        let root = geteuid() == 0
        if root, let why = writableByOthers(path) { return why }
        do {
            try FS.makeDirectories(path)
        } catch {
            return "\(path) cannot be made (\(error.localizedDescription))"
        }
        if root, let why = writableByOthers(path) { return why }
        let probe = path + "/.rootfs-probe-\(getpid())"
        let fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return "\(path) is not writable: \(FS.errnoText())" }
        close(fd)
        unlink(probe)
        return nil
    }

    /// Why another user could change what is under `path` (nil: only root can), checked for a
    /// root build. An incremental build runs the cached tree's own apt-get and maintainer scripts
    /// as root (docs/CACHE.md), and a restored tree becomes the outputs: a cache another user can
    /// write is a way to run code as root. As OpenSSH checks a key's directories: `path` and every
    /// directory above it must belong to root and be writable by no one else, unless sticky (/tmp).
    /// Components not made yet are skipped: their nearest existing parent is what is judged.
    static func writableByOthers(_ path: String) -> String? {
        var directory = FS.absolute(path)
        while true {
            var st = stat()
            // lstat: a link is judged by its own directory's check, and its target must pass too.
            guard lstat(directory, &st) == 0 else {
                if errno == ENOENT, directory != "/" { directory = FS.parent(directory); continue }
                return "\(directory) cannot be examined: \(FS.errnoText())"
            }
            if st.st_uid != 0 {
                return "\(directory) belongs to uid \(st.st_uid), not root, and a root build runs programs from the cached trees"
            }
            if (st.st_mode & S_IFMT) == S_IFDIR && st.st_mode & (S_IWGRP | S_IWOTH) != 0 && st.st_mode & S_ISVTX == 0 {
                return "\(directory) is writable by others (mode \(String(st.st_mode & 0o7777, radix: 8))), and a root build runs programs from the cached trees"
            }
            if (st.st_mode & S_IFMT) == S_IFLNK, let target = FS.realpath(directory), target != directory {
                if let why = writableByOthers(target) { return why }
            }
            if directory == "/" { return nil }
            directory = FS.parent(directory)
        }
    }
}

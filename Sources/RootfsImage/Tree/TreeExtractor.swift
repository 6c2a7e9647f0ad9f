import RootfsSupport
import Foundation

/// Writes a tree source into a new directory, safely: the source already
/// refused absolute names and `..`; here every item's parent must be a
/// directory this extractor created itself (so no member can be written
/// through a link), links are created, never followed, and ownership is kept
/// when running as root. Directory modes and times are set last.
public struct TreeExtractor {
    public var destination: String
    /// Whether to set owners (only root can); off otherwise.
    public var keepOwnership: Bool = geteuid() == 0
    /// Give the owner read/write (and search) access on disk whatever the source
    /// mode says, so a tool run by the same ordinary user can read every file
    /// (the real modes are set in the output afterwards, e.g. by Ext4Fixup).
    public var ownerAccess = false
    /// Device nodes an ordinary user cannot create become empty placeholder
    /// files (mode 0600), reported to `onItem` like every other item.
    public var devicePlaceholders = false
    /// Called for every item written (not hard links), with its inode on disk.
    public var onItem: ((TreeItem, UInt64) -> Void)?

    public init(destination: String) { self.destination = destination }

    public struct Result: Sendable {
        public var entries = 0
        public var skippedDevices = 0
    }

    /// Every item is made relative to its parent's descriptor (mkdirat, openat, linkat,
    /// symlinkat, mknodat with O_NOFOLLOW): names stay bytes (not UTF-8 is kept
    /// exactly) and a path longer than PATH_MAX is no limit, only a name's 255 bytes.
    @discardableResult
    public func extract(_ source: TreeSource) throws -> Result {
        try extract(named: source.path, walk: source.walk)
    }

    /// The same for any walk in canonical order (`rootfs cp`'s subtree of an image, rebased
    /// to "."): `named` is what errors call the source.
    @discardableResult
    public func extract(named sourceName: String, walk: ((TreeItem) throws -> Void) throws -> Void) throws -> Result {
        guard mkdir(destination, 0o700) == 0 else {
            throw RootfsError("cannot create \(destination): \(FS.errnoText())")
        }
        let rootFD = open(destination, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard rootFD >= 0 else { throw RootfsError("cannot open \(destination): \(FS.errnoText())") }
        defer { close(rootFD) }
        var result = Result()
        var directorySet = Set<[UInt8]>([[46]])
        var directoryItems: [TreeItem] = []
        var files = Set<[UInt8]>()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        let dest = destination
        func shown(_ path: [UInt8]) -> String { path == [46] ? dest : dest + "/" + String(decoding: path, as: UTF8.self) }
        // The open directories from the root down to the last one made: the walk is depth first.
        var stack = DirectoryStack(rootFD: rootFD, destination: dest)
        defer { stack.closeAll() }

        try walk { item in
            result.entries += 1
            if item.isRoot {
                directoryItems.append(item)
                return
            }
            let parent = parentPath(item.path)
            guard directorySet.contains(parent) else {
                throw RootfsError("\(sourceName): member \(item.pathString) lies under something that is not a directory (a link?)",
                                  hint: "refusing to write through a link; fix the archive")
            }
            let dirFD = try stack.descend(to: parent)
            let name = lastComponent(item.path)
            let path = shown(item.path)
            if let target = item.hardLinkTo {
                guard files.contains(target) else {
                    throw RootfsError("\(sourceName): hard link \(item.pathString) points to \(String(decoding: target, as: UTF8.self)), not an earlier regular file")
                }
                let targetFD = try openDirectory(parentPath(target), rootFD: rootFD)
                defer { close(targetFD) }
                let linked = lastComponent(target).withCString { from in name.withCString { linkat(targetFD, from, dirFD, $0, 0) } }
                guard linked == 0 else { throw RootfsError("cannot link \(path): \(FS.errnoText())") }
                return
            }
            switch item.fileType {
            case FileType.dir:
                guard name.withCString({ mkdirat(dirFD, $0, 0o700) }) == 0 else { throw RootfsError("cannot create \(path): \(FS.errnoText())") }
                try stack.push(item.path, name: name, in: dirFD)
                directorySet.insert(item.path)
                directoryItems.append(item)
                return
            case FileType.reg:
                let fd = name.withCString { openat(dirFD, $0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600) }
                guard fd >= 0 else { throw RootfsError("cannot create \(path): \(FS.errnoText())") }
                defer { close(fd) }
                try item.copyContent(buffer: buffer) { chunk in try FS.writeAll(chunk, to: fd, name: path) }
                files.insert(item.path)
            case FileType.lnk:
                let ok = (item.linkTarget ?? []).withCString { target in name.withCString { symlinkat(target, dirFD, $0) } } == 0
                guard ok else { throw RootfsError("cannot create the link \(path): \(FS.errnoText())") }
            default:
                if name.withCString({ mknodat(dirFD, $0, mode_t(item.mode & ~0o7777) | 0o600, dev_t(item.rdev)) }) != 0 {
                    if errno == EPERM && !keepOwnership {
                        result.skippedDevices += 1
                        guard devicePlaceholders else { return }
                        let fd = name.withCString { openat(dirFD, $0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600) }
                        guard fd >= 0 else { throw RootfsError("cannot create \(path): \(FS.errnoText())") }
                        close(fd)
                        // The placeholder gets the device's mode and time, so that a tool reading the
                        // directory (mkfs.erofs) lays it out as it does the real device of a root extraction.
                        try Self.setMetadata(at: dirFD, name, item, shown: path, keepOwnership: false, ownerAccess: ownerAccess)
                        onItem?(item, Self.inode(at: dirFD, name))
                        return
                    }
                    throw RootfsError("cannot create the special file \(path): \(FS.errnoText())")
                }
            }
            try Self.setMetadata(at: dirFD, name, item, shown: path, keepOwnership: keepOwnership, ownerAccess: ownerAccess)
            onItem?(item, Self.inode(at: dirFD, name))
        }
        stack.closeAll()
        // Directory modes and times last, deepest first (a read-only directory is filled before).
        for item in directoryItems.reversed() {
            let fd = try openDirectory(item.path, rootFD: rootFD)
            defer { close(fd) }
            try Self.setMetadata(at: fd, [], item, shown: shown(item.path), keepOwnership: keepOwnership, ownerAccess: ownerAccess)
            onItem?(item, Self.inode(at: fd, []))
        }
        return result
    }

    /// Opens the directory `path` (relative, bytes) below `rootFD` one name at a time,
    /// never following a link.
    func openDirectory(_ path: [UInt8], rootFD: Int32) throws -> Int32 {
        var fd = dup(rootFD)
        guard fd >= 0 else { throw RootfsError("cannot open \(destination): \(FS.errnoText())") }
        guard path != [46] else { return fd }
        for component in path.split(separator: UInt8(ascii: "/")) {
            let next = Array(component).withCString { openat(fd, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            close(fd)
            guard next >= 0 else {
                throw RootfsError("cannot open \(destination)/\(String(decoding: path, as: UTF8.self)): \(FS.errnoText())")
            }
            fd = next
        }
        return fd
    }

    static func inode(at dirFD: Int32, _ name: [UInt8]) -> UInt64 {
        var st = stat()
        let rc = name.isEmpty ? fstat(dirFD, &st) : name.withCString { fstatat(dirFD, $0, &st, AT_SYMLINK_NOFOLLOW) }
        return rc == 0 ? UInt64(st.st_ino) : 0
    }

    /// Owner (when allowed), mode (not for links) and time of a host path (bytes), never following a link.
    static func setMetadata(_ path: [UInt8], _ item: TreeItem, keepOwnership: Bool, ownerAccess: Bool = false, mtime: Int? = nil) throws {
        try setMetadata(at: AT_FDCWD, path, item, shown: String(decoding: path, as: UTF8.self),
                        keepOwnership: keepOwnership, ownerAccess: ownerAccess, mtime: mtime)
    }

    /// The same relative to a directory descriptor; an empty `name` is the directory itself.
    public static func setMetadata(at dirFD: Int32, _ name: [UInt8], _ item: TreeItem, shown: String, keepOwnership: Bool,
                            ownerAccess: Bool = false, mtime: Int? = nil) throws {
        let own = name.isEmpty ? fchown(dirFD, item.uid, item.gid)
            : name.withCString { fchownat(dirFD, $0, item.uid, item.gid, AT_SYMLINK_NOFOLLOW) }
        if keepOwnership && own != 0 {
            throw RootfsError("cannot set the owner of \(shown): \(FS.errnoText())")
        }
        let access: UInt32 = ownerAccess ? (item.fileType == FileType.dir ? 0o700 : 0o600) : 0
        if item.fileType != FileType.lnk {
            let mode = mode_t(item.permissions | access)
            let rc = name.isEmpty ? fchmod(dirFD, mode) : name.withCString { fchmodat(dirFD, $0, mode, 0) }
            if rc != 0 { throw RootfsError("cannot set the mode of \(shown): \(FS.errnoText())") }
        }
        var times = [timespec(tv_sec: mtime ?? item.mtime, tv_nsec: 0), timespec(tv_sec: mtime ?? item.mtime, tv_nsec: 0)]
        let rc = name.isEmpty ? futimens(dirFD, &times) : name.withCString { utimensat(dirFD, $0, &times, AT_SYMLINK_NOFOLLOW) }
        if rc != 0 {
            throw RootfsError("cannot set the time of \(shown): \(FS.errnoText())")
        }
    }
}

/// The last name of a relative path.
func lastComponent(_ path: [UInt8]) -> [UInt8] {
    guard let slash = path.lastIndex(of: UInt8(ascii: "/")) else { return path }
    return Array(path[(slash + 1)...])
}

/// The extractor's open directories, root first: each one opened by name in its parent
/// right after mkdirat, so no path is ever resolved again.
struct DirectoryStack {
    private var entries: [(path: [UInt8], fd: Int32)]
    private let destination: String

    init(rootFD: Int32, destination: String) {
        entries = [([46], rootFD)]
        self.destination = destination
    }

    /// The descriptor of `path`, an open directory or a descendant of one already made.
    mutating func descend(to path: [UInt8]) throws -> Int32 {
        while let top = entries.last, top.path != path {
            if top.path == [46] || (path.starts(with: top.path) && path.count > top.path.count && path[top.path.count] == UInt8(ascii: "/")) {
                // Out of canonical order: open the rest of the way, name by name.
                let rest = top.path == [46] ? path : Array(path[(top.path.count + 1)...])
                var current = top.path
                for component in rest.split(separator: UInt8(ascii: "/")) {
                    let name = Array(component)
                    let next = current == [46] ? name : current + [UInt8(ascii: "/")] + name
                    try push(next, name: name, in: entries.last!.fd)
                    current = next
                }
                return entries.last!.fd
            }
            close(top.fd)
            entries.removeLast()
        }
        return entries.last!.fd
    }

    mutating func push(_ path: [UInt8], name: [UInt8], in parent: Int32) throws {
        let fd = name.withCString { openat(parent, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        guard fd >= 0 else {
            throw RootfsError("cannot open \(destination)/\(String(decoding: path, as: UTF8.self)): \(FS.errnoText())")
        }
        entries.append((path, fd))
    }

    /// Closes every directory but the root (the caller's).
    mutating func closeAll() {
        while entries.count > 1 { close(entries.removeLast().fd) }
    }
}

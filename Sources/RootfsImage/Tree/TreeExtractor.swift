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
    /// Called for every item written (not hard links), with its host path.
    public var onItem: ((TreeItem, String) -> Void)?

    public init(destination: String) { self.destination = destination }

    public struct Result: Sendable {
        public var entries = 0
        public var skippedDevices = 0
    }

    @discardableResult
    public func extract(_ source: TreeSource) throws -> Result {
        guard mkdir(destination, 0o700) == 0 else {
            throw RootfsError("cannot create \(destination): \(FS.errnoText())")
        }
        var result = Result()
        var directories: [[UInt8]] = []
        var directorySet = Set<[UInt8]>([[46]])
        var directoryItems: [TreeItem] = []
        var files = Set<[UInt8]>()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        let dest = destination
        func host(_ path: [UInt8]) -> String { path == [46] ? dest : dest + "/" + String(decoding: path, as: UTF8.self) }

        try source.walk { item in
            result.entries += 1
            if item.isRoot {
                directoryItems.append(item)
                return
            }
            guard directorySet.contains(parentPath(item.path)) else {
                throw RootfsError("\(source.path): member \(item.pathString) lies under something that is not a directory (a link?)",
                                  hint: "refusing to write through a link; fix the archive")
            }
            let path = host(item.path)
            if let target = item.hardLinkTo {
                guard files.contains(target) else {
                    throw RootfsError("\(source.path): hard link \(item.pathString) points to \(String(decoding: target, as: UTF8.self)), not an earlier regular file")
                }
                guard link(host(target), path) == 0 else { throw RootfsError("cannot link \(path): \(FS.errnoText())") }
                return
            }
            switch item.fileType {
            case FileType.dir:
                guard mkdir(path, 0o700) == 0 else { throw RootfsError("cannot create \(path): \(FS.errnoText())") }
                directorySet.insert(item.path)
                directories.append(item.path)
                directoryItems.append(item)
                return
            case FileType.reg:
                let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
                guard fd >= 0 else { throw RootfsError("cannot create \(path): \(FS.errnoText())") }
                defer { close(fd) }
                try item.copyContent(buffer: buffer) { chunk in try FS.writeAll(chunk, to: fd, name: path) }
                files.insert(item.path)
            case FileType.lnk:
                let ok = (item.linkTarget ?? []).withCString { symlink($0, path) } == 0
                guard ok else { throw RootfsError("cannot create the link \(path): \(FS.errnoText())") }
            default:
                if mknod(path, mode_t(item.mode & ~0o7777) | 0o600, dev_t(item.rdev)) != 0 {
                    if errno == EPERM && !keepOwnership {
                        result.skippedDevices += 1
                        guard devicePlaceholders else { return }
                        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
                        guard fd >= 0 else { throw RootfsError("cannot create \(path): \(FS.errnoText())") }
                        close(fd)
                        // The placeholder gets the device's mode and time (below), so that a tool reading the
                        // directory (mkfs.erofs) lays it out as it does the real device of a root extraction.
                        try Self.setMetadata(path, item, keepOwnership: false, ownerAccess: ownerAccess)
                        onItem?(item, path)
                        return
                    }
                    throw RootfsError("cannot create the special file \(path): \(FS.errnoText())")
                }
            }
            try Self.setMetadata(path, item, keepOwnership: keepOwnership, ownerAccess: ownerAccess)
            onItem?(item, path)
        }
        for item in directoryItems.reversed() {
            try Self.setMetadata(host(item.path), item, keepOwnership: keepOwnership, ownerAccess: ownerAccess)
            onItem?(item, host(item.path))
        }
        return result
    }

    /// Owner (when allowed), mode (not for links) and time, never following a link.
    static func setMetadata(_ path: String, _ item: TreeItem, keepOwnership: Bool, ownerAccess: Bool = false, mtime: Int? = nil) throws {
        if keepOwnership && fchownat(AT_FDCWD, path, item.uid, item.gid, AT_SYMLINK_NOFOLLOW) != 0 {
            throw RootfsError("cannot set the owner of \(path): \(FS.errnoText())")
        }
        let access: UInt32 = ownerAccess ? (item.fileType == FileType.dir ? 0o700 : 0o600) : 0
        if item.fileType != FileType.lnk && chmod(path, mode_t(item.permissions | access)) != 0 {
            throw RootfsError("cannot set the mode of \(path): \(FS.errnoText())")
        }
        var times = [timespec(tv_sec: mtime ?? item.mtime, tv_nsec: 0), timespec(tv_sec: mtime ?? item.mtime, tv_nsec: 0)]
        if utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW) != 0 {
            throw RootfsError("cannot set the time of \(path): \(FS.errnoText())")
        }
    }
}

import RootfsSupport
import Foundation

/// How a build's tree travels from the hook to the writers.
///
/// - `directory` (root): the hook fills a directory with real owners; the agent,
///   build record and overlays are added to it; every writer reads it.
/// - `tar` (an ordinary user): the hook writes a tar (mmdebstrap's unshare mode
///   keeps real owners in it, which an ordinary user cannot put on disk). The tar
///   is extracted as the user for the agent, record, overlays and checks, while
///   each entry's true owner, mode and device number is kept in memory; then the
///   tree is written once more as a tar with those owners restored (anything the
///   build added is root:root), and every writer reads that tar.
public enum TreeTransport: String, Sendable {
    case directory, tar

    /// The transport a build by this process uses.
    public static var current: TreeTransport { geteuid() == 0 ? .directory : .tar }
}

/// The owners, modes and device numbers of a hook's tar, by path, while its
/// content sits on disk extracted by an ordinary user.
public final class RootlessTree {
    struct Original {
        var uid: UInt32
        var gid: UInt32
        var mode: UInt32
        var rdev: UInt64
        /// The inode the extraction made: a file the build replaced later has another one and is the build's own.
        var inode: UInt64
    }

    let root: String
    private(set) var originals: [[UInt8]: Original] = [:]

    public init(root: String) { self.root = root }

    /// Extracts the hook's tar into `root` (which must not exist), recording what the disk cannot hold.
    public func extract(_ tar: String) throws {
        try extract(source: .archive(tar))
    }

    /// The same for any tree source (`extend` reads an ext4 image's own tree: owners,
    /// modes and devices come from its inodes, which an ordinary user cannot put on disk).
    public func extract(source: TreeSource) throws {
        var extractor = TreeExtractor(destination: root)
        extractor.keepOwnership = geteuid() == 0
        extractor.ownerAccess = !extractor.keepOwnership
        extractor.devicePlaceholders = true
        extractor.onItem = { [self] item, inode in
            originals[item.path] = Original(uid: item.uid, gid: item.gid, mode: item.mode, rdev: item.rdev, inode: inode)
        }
        try extractor.extract(source)
    }

    /// Puts the recorded owner, mode and device back on an item read from `root`.
    /// Items the build added or replaced (another inode) belong to root:root.
    public func restore(_ item: inout TreeItem) {
        var st = stat()
        // Bytes: a name that is not UTF-8 finds its own record, never another's.
        let host = item.isRoot ? Array(root.utf8) : Array(root.utf8) + [UInt8(ascii: "/")] + item.path
        let sameInode = host.withCString { lstat($0, &st) } == 0
        if let original = originals[item.path], sameInode, UInt64(st.st_ino) == original.inode {
            item.uid = original.uid
            item.gid = original.gid
            let type = original.mode & 0o170000
            if (type == FileType.chr || type == FileType.blk || type == FileType.ifo || type == FileType.sock)
                && item.fileType == FileType.reg && item.hardLinkTo == nil {
                // A placeholder file stands for a device node the user could not create.
                item.size = 0
                item.readContent = nil
                item.nlink = 1
                item.rdev = original.rdev
            }
            item.mode = original.mode
        } else {
            item.uid = 0
            item.gid = 0
        }
    }

    /// Writes the tree as a tar with the owners restored: what every writer reads.
    public func writeTar(to output: String, epoch: Int?) throws {
        var archiver = TreeArchiver(format: .paxRestricted, compression: .none, level: nil, epoch: epoch)
        archiver.transform = { [self] item in restore(&item) }
        _ = try archiver.write(source: .directory(root), to: output)
    }
}

import Foundation

/// `rootfs cp IMAGE:PATH DEST`: a file, or a directory with everything below it, copied out of
/// an image onto the host.
///
/// PATH is resolved inside the image (ImageIndex, GuestTree's rules): its links are followed
/// there, absolute ones from the image's root, and `..` stops at that root, so no PATH reaches
/// the host. Below a copied directory, links are copied as links (their targets unchanged, never
/// followed), hard links stay hard links, modes and times are kept, and owners and device nodes
/// too when run as root (TreeExtractor writes the subtree). The copy is written to a temporary
/// name next to its destination and renamed at the end.
public struct ImageCopy {
    public struct Result: Sendable {
        /// The host path written.
        public var destination: String
        public var isDirectory: Bool
        public var entries: Int
        public var bytes: Int64
        public var skippedDevices: Int
    }

    /// A private signal that ends a walk once the copy has what it needs.
    private struct Done: Error {}

    public static func copy(_ image: OpenedImage, path guestPath: [UInt8], to destination: String) throws -> Result {
        let index = try ImageIndex(image.source)
        let item = try index.require(guestPath, image: image.name)
        let isDirectory = item.fileType == 0o040000
        guard isDirectory || item.fileType == FileType.reg else {
            throw RootfsError("\(image.name): \(displayPath(ImageIndex.absolute(guestPath))) is a \(ImageListing.modeString(item.mode).first == "l" ? "link" : "special file"), not a file or directory",
                              hint: "rootfs cp copies regular files and directories (a directory copies its devices and links)")
        }
        // Where: into DEST when it is an existing directory (under the item's own name), else DEST itself.
        let absoluteDestination = FS.absolute(destination)
        let parent: String, name: [UInt8]
        if FS.isDirectory(absoluteDestination) {
            guard !item.isRoot else {
                throw RootfsError("\(destination) exists: the image's whole tree is copied to a new directory",
                                  hint: "name a DEST that does not exist yet, e.g. \(destination)/rootfs")
            }
            parent = absoluteDestination
            name = ImageIndex.lastName(item.path)
        } else {
            parent = FS.parent(absoluteDestination)
            name = Array(FS.basename(absoluteDestination).utf8)
            guard FS.isDirectory(parent) else {
                throw RootfsError("\(parent) is not a directory", hint: "create it first, or give another DEST")
            }
        }
        let parentFD = try OwnedFileDescriptor(path: parent, flags: O_RDONLY | O_DIRECTORY)
        let shownDestination = parent + "/" + displayPath(name)
        if isDirectory, name.withCString({ faccessat(parentFD.raw, $0, F_OK, AT_SYMLINK_NOFOLLOW) }) == 0 {
            throw RootfsError("\(shownDestination) already exists", hint: "rootfs cp writes a directory to a new name; remove it or give another DEST")
        }
        let temporary = Array(".rootfs-cp-\(getpid())-\(UInt32.random(in: 0 ... .max))".utf8)
        var result = Result(destination: shownDestination, isDirectory: isDirectory, entries: 0, bytes: 0, skippedDevices: 0)
        if isDirectory {
            let work = parent + "/" + String(decoding: temporary, as: UTF8.self)
            do {
                let extracted = try TreeExtractor(destination: work).extract(named: image.name) { visit in
                    try walkSubtree(image.source, index: index, root: item.path, visit)
                }
                result.entries = extracted.entries
                result.skippedDevices = extracted.skippedDevices
            } catch {
                FS.remove(work)
                throw error
            }
            guard temporary.withCString({ from in name.withCString { renameat(parentFD.raw, from, parentFD.raw, $0) } }) == 0 else {
                let why = FS.errnoText()
                FS.remove(work)
                throw RootfsError("cannot rename the copy to \(shownDestination): \(why)")
            }
        } else {
            // The content holder: the first name of a hard-linked file.
            let holder = item.hardLinkTo ?? item.path
            let fd = temporary.withCString { openat(parentFD.raw, $0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600) }
            guard fd >= 0 else { throw RootfsError("cannot create a file in \(parent): \(FS.errnoText())") }
            defer { close(fd) }
            do {
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
                defer { buffer.deallocate() }
                var written: Int64 = 0
                do {
                    try image.source.walk { it in
                        guard it.path == holder else { return }
                        try it.copyContent(buffer: buffer) { chunk in
                            try FS.writeAll(chunk, to: fd, name: shownDestination)
                            written += Int64(chunk.count)
                        }
                        throw Done()
                    }
                } catch is Done {}
                result.bytes = written
                result.entries = 1
                try TreeExtractor.setMetadata(at: parentFD.raw, temporary, item, shown: shownDestination, keepOwnership: geteuid() == 0)
                guard temporary.withCString({ from in name.withCString { renameat(parentFD.raw, from, parentFD.raw, $0) } }) == 0 else {
                    throw RootfsError("cannot rename the copy to \(shownDestination): \(FS.errnoText())",
                                      hint: "a directory of that name is in the way?")
                }
            } catch {
                _ = temporary.withCString { unlinkat(parentFD.raw, $0, 0) }
                throw error
            }
        }
        return result
    }

    /// The items at and below `root`, rebased so `root` is "." (what TreeExtractor writes).
    /// A hard link whose first name lies outside the subtree makes its first name inside the
    /// subtree a regular file, its content spooled from the outside name (which the canonical
    /// walk visits first); the walk ends once it has left the subtree (which is contiguous).
    static func walkSubtree(_ source: TreeSource, index: ImageIndex, root: [UInt8],
                            _ visit: (TreeItem) throws -> Void) throws {
        let prefix = root == [46] ? [] : root + [UInt8(ascii: "/")]
        func inside(_ p: [UInt8]) -> Bool { root == [46] || p == root || p.starts(with: prefix) }
        func rebased(_ p: [UInt8]) -> [UInt8] { p == root ? [46] : Array(p.dropFirst(prefix.count)) }
        // First names outside that are hard-linked from inside.
        var needed = Set<[UInt8]>()
        for (p, it) in index.items where inside(p) {
            if let first = it.hardLinkTo, !inside(first) { needed.insert(first) }
        }
        var spooled: [[UInt8]: (fd: Int32, size: Int64)] = [:]
        var newFirst: [[UInt8]: [UInt8]] = [:]
        defer { for s in spooled.values { close(s.fd) } }
        var entered = false
        do {
            try source.walk { item in
                if needed.contains(item.path) {
                    spooled[item.path] = (try spool(item), item.size)
                }
                guard inside(item.path) else {
                    if entered { throw Done() }
                    return
                }
                entered = true
                var it = item
                it.path = rebased(item.path)
                if let first = item.hardLinkTo {
                    if inside(first) {
                        it.hardLinkTo = rebased(first)
                    } else if let mine = newFirst[first] {
                        it.hardLinkTo = mine
                    } else if let file = spooled[first] {
                        newFirst[first] = it.path
                        it.hardLinkTo = nil
                        it.size = file.size
                        var position: Int64 = 0
                        it.readContent = { buffer in
                            let n = pread(file.fd, buffer.baseAddress, buffer.count, off_t(position))
                            if n < 0 { throw RootfsError("cannot read the spool file: \(FS.errnoText())") }
                            position += Int64(n)
                            return n
                        }
                    }
                }
                try visit(it)
            }
        } catch is Done {}
    }

    /// A regular file's content in an unlinked temporary file.
    static func spool(_ item: TreeItem) throws -> Int32 {
        let path = FS.siblingTemporaryPath(for: NSTemporaryDirectory() + "/rootfs-cp-spool")
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw RootfsError("cannot create a spool file in \(NSTemporaryDirectory()): \(FS.errnoText())") }
        unlink(path)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        do {
            try item.copyContent(buffer: buffer) { chunk in try FS.writeAll(chunk, to: fd, name: "the spool file") }
        } catch {
            close(fd)
            throw error
        }
        return fd
    }
}

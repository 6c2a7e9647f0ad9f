import RootfsSupport
import CArchive
import Foundation

/// Reads a container image's layers as one tree, in process, without unpacking
/// them anywhere: a first pass reads every layer's headers (and proves its digest)
/// into an index of what survives (path -> layer, member, metadata), applying the
/// layers in order with the OCI rules; the walk then streams each file's content
/// from its layer. Memory holds the index, never content.
///
/// The OCI rules (image-spec layer.md): a later layer's entry replaces an earlier
/// one (a directory over a directory keeps the children); `.wh.NAME` removes NAME
/// (and what is under it) from the lower layers; `.wh..wh..opq` in a directory
/// removes the lower layers' children of that directory. Whiteouts apply to lower
/// layers only, so they are applied before the layer's own entries.
struct ImageTreeReader {
    var reference: ImageReference

    /// What the index holds for one surviving path.
    struct Entry {
        var item: TreeItem
        var layer: Int
        /// The member of the layer holding the content (regular files).
        var member: Int
        /// Hard-link identity: names sharing it are one file.
        var inode: Int
    }

    struct Index {
        var entries: [[UInt8]: Entry] = [:]
        var children: [[UInt8]: Set<[UInt8]>] = [:]
        var layers: [LayerBlob] = []
    }

    func walk(_ visit: (TreeItem) throws -> Void) throws {
        let image = try reference.resolve()
        let index = try buildIndex(image.layers)
        try stream(index, visit)
    }

    // MARK: the index

    func buildIndex(_ layers: [LayerBlob]) throws -> Index {
        var index = Index()
        index.layers = layers
        index.entries[[46]] = Entry(item: Self.directory([46]), layer: -1, member: -1, inode: 0)
        index.children[[46]] = []
        var nextInode = 1
        for (l, blob) in layers.enumerated() {
            let archive = try LayerArchive(blob)
            var opaque: [[UInt8]] = []
            var whiteouts: [[UInt8]] = []
            var added: [(Entry, hardLink: [UInt8]?)] = []
            while let e = try archive.next() {
                let where_ = blob.label
                var item = try Self.item(from: e, layer: where_)
                let name = item.path.split(separator: 47).last.map(Array.init) ?? []
                if name.starts(with: Self.whiteoutPrefix) {
                    let parent = parentPath(item.path)
                    if name == Self.opaqueMarker {
                        opaque.append(parent)
                    } else {
                        let target = Array(name.dropFirst(Self.whiteoutPrefix.count))
                        guard !target.isEmpty, target != [46], target != [46, 46] else {
                            throw RootfsError("\(where_) holds the whiteout \(item.pathString), which names no file",
                                              hint: "refusing a layer that could reach outside the tree")
                        }
                        whiteouts.append(parent == [46] ? target : parent + [47] + target)
                    }
                    continue
                }
                let link = item.hardLinkTo
                item.hardLinkTo = nil
                added.append((Entry(item: item, layer: l, member: archive.ordinal, inode: 0), link))
            }
            // The whole layer was read: its digest and size are known now.
            try archive.stream.finishAndVerify()
            for dir in opaque where index.entries[dir]?.item.fileType == FileType.dir {
                for child in index.children[dir] ?? [] { index.remove(child) }
            }
            for path in whiteouts { index.remove(path) }
            for (var entry, link) in added {
                let path = entry.item.path
                if let target = link {
                    // tar stores a name given twice as a hard link to itself: the earlier member stands.
                    if target == path { continue }
                    guard let first = index.entries[target], first.item.fileType == FileType.reg else {
                        throw RootfsError("\(blob.label): the hard link \(entry.item.pathString) points to \(String(decoding: target, as: UTF8.self)), which is no regular file",
                                          hint: "the layer is corrupt")
                    }
                    var copy = first
                    copy.item.path = path
                    entry = copy
                } else if entry.item.fileType == FileType.reg {
                    entry.inode = nextInode
                    nextInode += 1
                }
                try index.insert(entry, label: blob.label)
            }
        }
        return index
    }

    static let whiteoutPrefix: [UInt8] = Array(".wh.".utf8)
    static let opaqueMarker: [UInt8] = Array(".wh..wh..opq".utf8)

    static func directory(_ path: [UInt8]) -> TreeItem {
        TreeItem(path: path, mode: FileType.dir | 0o755, uid: 0, gid: 0, mtime: 0, size: 0,
                 linkTarget: nil, hardLinkTo: nil, nlink: 2, rdev: 0)
    }

    /// A layer member as a TreeItem, through the archive reader's name guards.
    static func item(from e: OpaquePointer, layer: String) throws -> TreeItem {
        func bytes(_ p: UnsafePointer<CChar>?) -> [UInt8]? {
            p.map { Array(UnsafeBufferPointer(start: UnsafeRawPointer($0).assumingMemoryBound(to: UInt8.self), count: strlen($0))) }
        }
        let name = try normalizeMemberName(bytes(archive_entry_pathname(e)) ?? [], archive: layer)
        var mode = UInt32(archive_entry_mode(e))
        let hardlink = try bytes(archive_entry_hardlink(e)).map { try normalizeMemberName($0, archive: layer) }
        if hardlink != nil && mode & 0o170000 == 0 { mode |= FileType.reg }
        let type = mode & 0o170000
        guard FileType.all.contains(type) else {
            throw RootfsError("\(layer): member \(String(decoding: name, as: UTF8.self)) has an unknown file type")
        }
        if name == [46] && type != FileType.dir {
            throw RootfsError("\(layer): the root member is not a directory")
        }
        let isDevice = type == FileType.chr || type == FileType.blk
        return TreeItem(path: name, mode: mode, uid: UInt32(truncatingIfNeeded: archive_entry_uid(e)),
                        gid: UInt32(truncatingIfNeeded: archive_entry_gid(e)), mtime: archive_entry_mtime(e),
                        size: type == FileType.reg && hardlink == nil ? max(0, archive_entry_size(e)) : 0,
                        linkTarget: type == FileType.lnk ? (bytes(archive_entry_symlink(e)) ?? []) : nil,
                        hardLinkTo: hardlink, nlink: type == FileType.dir ? 2 : 1,
                        rdev: isDevice ? UInt64(archive_entry_rdev(e)) : 0)
    }

    // MARK: the walk

    private func stream(_ index: Index, _ visit: (TreeItem) throws -> Void) throws {
        // Canonical order: parents first, siblings sorted bytewise.
        var order: [[UInt8]] = []
        order.reserveCapacity(index.entries.count)
        var stack: [[UInt8]] = [[46]]
        while let path = stack.popLast() {
            order.append(path)
            let kids = (index.children[path] ?? []).sorted { $0.lexicographicallyPrecedes($1) }
            stack.append(contentsOf: kids.reversed())
        }
        // Hard-link groups: the first name in walk order holds the content.
        var groupSize: [Int: UInt32] = [:]
        var firstName: [Int: [UInt8]] = [:]
        for path in order {
            let entry = index.entries[path]!
            guard entry.item.fileType == FileType.reg else { continue }
            groupSize[entry.inode, default: 0] += 1
            if firstName[entry.inode] == nil { firstName[entry.inode] = path }
        }
        // A layer whose files come in an order far from the walk's would be re-read
        // many times: its needed contents are spooled once to an unlinked file instead.
        var wanted: [Int: [Int]] = [:]
        for path in order {
            let entry = index.entries[path]!
            if entry.item.fileType == FileType.reg && entry.item.size > 0 && firstName[entry.inode] == path {
                wanted[entry.layer, default: []].append(entry.member)
            }
        }
        var spools: [Int: LayerSpool] = [:]
        for (layer, members) in wanted {
            let descents = zip(members, members.dropFirst()).filter { $0 > $1 }.count
            if descents > 8 { spools[layer] = try LayerSpool(index.layers[layer], members: Set(members)) }
        }
        var cursors: [Int: LayerArchive] = [:]
        for path in order {
            var item = index.entries[path]!.item
            let entry = index.entries[path]!
            if item.fileType == FileType.reg {
                item.nlink = groupSize[entry.inode] ?? 1
                if let first = firstName[entry.inode], first != path {
                    item.hardLinkTo = first
                    item.size = 0
                    try visit(item)
                    continue
                }
            }
            if item.fileType == FileType.reg && item.size > 0 {
                let name = item.pathString
                if let spool = spools[entry.layer] {
                    var position = try spool.offset(of: entry.member)
                    item.readContent = { buffer in
                        let n = try spool.read(into: buffer, at: position)
                        position += Int64(n)
                        return n
                    }
                } else {
                    var cursor = cursors[entry.layer]
                    if cursor == nil || cursor!.ordinal >= entry.member {
                        cursor = try LayerArchive(index.layers[entry.layer])
                        cursors[entry.layer] = cursor
                    }
                    while cursor!.ordinal < entry.member {
                        guard try cursor!.next() != nil else {
                            throw RootfsError("\(index.layers[entry.layer].label) changed while it was read: \(name) is missing")
                        }
                    }
                    let archive = cursor!
                    item.readContent = { buffer in try archive.read(into: buffer, name: name) }
                }
            }
            try visit(item)
        }
    }
}

extension ImageTreeReader.Index {
    /// Removes a path and everything under it.
    mutating func remove(_ path: [UInt8]) {
        guard entries.removeValue(forKey: path) != nil else { return }
        children[parentPath(path)]?.remove(path)
        var stack = [path]
        while let p = stack.popLast() {
            guard let kids = children.removeValue(forKey: p) else { continue }
            for k in kids {
                entries.removeValue(forKey: k)
                stack.append(k)
            }
        }
    }

    /// Adds a layer's entry over what the lower layers left.
    mutating func insert(_ entry: ImageTreeReader.Entry, label: String) throws {
        let path = entry.item.path
        if path == [46] {
            entries[[46]]!.item = entry.item
            return
        }
        // Parents a layer left out become plain directories; a parent that is no directory is refused
        // rather than followed (a lower layer's symlink must not lead a later layer elsewhere).
        var missing: [[UInt8]] = []
        var parent = parentPath(path)
        while true {
            if let existing = entries[parent] {
                guard existing.item.fileType == FileType.dir else {
                    throw RootfsError("\(label): \(entry.item.pathString) is under \(String(decoding: parent, as: UTF8.self)), which is no directory",
                                      hint: "refusing to follow a link or replace a file to place a layer's entry")
                }
                break
            }
            missing.append(parent)
            parent = parentPath(parent)
        }
        for dir in missing.reversed() {
            entries[dir] = ImageTreeReader.Entry(item: ImageTreeReader.directory(dir), layer: -1, member: -1, inode: 0)
            children[parentPath(dir), default: []].insert(dir)
            children[dir] = []
        }
        if let existing = entries[path] {
            if existing.item.fileType == FileType.dir && entry.item.fileType == FileType.dir {
                entries[path] = entry
                return
            }
            remove(path)
        }
        entries[path] = entry
        children[parentPath(path), default: []].insert(path)
        if entry.item.fileType == FileType.dir { children[path] = [] }
    }
}

/// The contents of one layer's files, copied once to an unlinked temporary file, for
/// a layer whose member order is far from the walk's.
final class LayerSpool {
    private let fd: Int32
    private var offsets: [Int: Int64] = [:]
    private let label: String

    init(_ blob: LayerBlob, members: Set<Int>) throws {
        label = blob.label
        let spoolPath = FS.siblingTemporaryPath(for: NSTemporaryDirectory() + "/rootfs-layer-spool")
        fd = open(spoolPath, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw RootfsError("cannot create a spool file in \(NSTemporaryDirectory()): \(FS.errnoText())") }
        unlink(spoolPath)
        let archive = try LayerArchive(blob)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        var end: Int64 = 0
        while try archive.next() != nil {
            guard members.contains(archive.ordinal) else { continue }
            offsets[archive.ordinal] = end
            while true {
                let n = try archive.read(into: buffer, name: "member \(archive.ordinal)")
                if n == 0 { break }
                var done = 0
                while done < n {
                    let w = pwrite(fd, buffer.baseAddress! + done, n - done, off_t(end))
                    guard w > 0 else { throw RootfsError("cannot write the spool file: \(FS.errnoText())") }
                    done += w
                    end += Int64(w)
                }
            }
        }
    }

    deinit { close(fd) }

    func offset(of member: Int) throws -> Int64 {
        guard let offset = offsets[member] else { throw RootfsError("\(label) changed while it was read") }
        return offset
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at position: Int64) throws -> Int {
        let n = pread(fd, buffer.baseAddress, buffer.count, off_t(position))
        if n < 0 { throw RootfsError("cannot read the spool file: \(FS.errnoText())") }
        return n
    }
}

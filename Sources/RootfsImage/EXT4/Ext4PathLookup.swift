import Foundation
import RootfsSupport

/// One file of an ext4 file system found by its path, as the guest's kernel would find it:
/// every symlink on the way followed (absolute targets from the file system's root, at most
/// 40 hops, as Linux), without walking the whole tree. `rootfs boot DISK` reads the ELF
/// header of the guest's init this way to pick the QEMU machine.
public enum Ext4PathLookup {
    /// The first `count` bytes of the regular file at `path` (bytes, relative to the root),
    /// or nil when no such regular file is there (missing, a directory, a link loop).
    /// A corrupt file system is a RootfsError, as for the walk.
    public static func head(of path: [UInt8], image: String, offset: Int64, count: Int) throws -> [UInt8]? {
        let volume = try Ext4Volume(path: image, offset: offset)
        guard let node = try volume.lookup(path), node.fileType == FileType.reg else { return nil }
        let item = try volume.item(node, path: path)
        guard let read = item.readContent else { return [] }
        var bytes = [UInt8](repeating: 0, count: min(count, Int(clamping: item.size)))
        var filled = 0
        while filled < bytes.count {
            let n = try bytes.withUnsafeMutableBytes { buffer in
                try read(UnsafeMutableRawBufferPointer(rebasing: buffer[filled...]))
            }
            if n == 0 { break }
            filled += n
        }
        return Array(bytes.prefix(filled))
    }
}

extension Ext4Volume {
    /// The inode at `path`, links followed; nil when a component is missing or not a directory.
    func lookup(_ path: [UInt8]) throws -> Ext4Inode? {
        var pending: [[UInt8]] = path.split(separator: UInt8(ascii: "/")).map { Array($0) }
        // The directories walked so far: (name, inode number); `..` pops one.
        var resolved: [([UInt8], UInt32)] = []
        var hops = 0
        while !pending.isEmpty {
            let part = pending.removeFirst()
            if part == [46] { continue }
            if part == [46, 46] { _ = resolved.popLast(); continue }
            let parentNumber = resolved.last?.1 ?? Self.rootInode
            let parentPath: [UInt8] = Array(resolved.map(\.0).joined(separator: [47]))
            let parent = try inode(parentNumber, what: "the directory \(debugName(parentPath))")
            guard parent.fileType == FileType.dir else { return nil }
            guard let entry = try entries(of: parent, number: parentNumber, path: parentPath).first(where: { $0.name == part }) else {
                return nil
            }
            let childPath: [UInt8] = parentPath + (parentPath.isEmpty ? [] : [47]) + part
            let node = try inode(entry.inode, what: "the entry \(debugName(childPath))")
            if node.fileType == FileType.lnk {
                hops += 1
                guard hops <= 40, let target = try item(node, path: childPath).linkTarget else { return nil }
                if target.first == 47 { resolved = [] }
                pending = target.split(separator: UInt8(ascii: "/")).map { Array($0) } + pending
                continue
            }
            if pending.isEmpty { return node }
            resolved.append((part, entry.inode))
        }
        // The path named a directory (or the root).
        return try inode(resolved.last?.1 ?? Self.rootInode, what: "the directory \(debugName(path))")
    }
}

import RootfsSupport
import Foundation

/// Compares two trees (directories, tars, initrds: anything TreeSource reads)
/// entry by entry: what a user runs to find what broke reproducibility.
public struct TreeDiff {
    /// One entry as compared: every attribute the writers put in an image.
    public struct Entry: Equatable, Sendable {
        public var type: String
        public var mode: UInt32
        public var uid: UInt32
        public var gid: UInt32
        public var size: Int64
        public var mtime: Int
        public var linkTarget: [UInt8]?
        public var hardLinkTo: [UInt8]?
        public var rdev: UInt64
        public var sha256: String?
    }

    /// One difference, printable.
    public struct Difference: Equatable, Sendable, CustomStringConvertible {
        public enum Kind: String, Sendable { case onlyInA = "only in A", onlyInB = "only in B", changed }
        public var kind: Kind
        public var path: [UInt8]
        /// "field: a -> b" for changed entries.
        public var fields: [String]

        /// The path for people: bytes that are not UTF-8 and control characters as `\xNN`
        /// (displayPath), so two names differing in one such byte never print alike.
        public var pathString: String { "/" + (path == [46] ? "" : displayPath(path)) }

        public var description: String {
            switch kind {
            case .onlyInA, .onlyInB: return "\(kind.rawValue): \(pathString)" + (fields.isEmpty ? "" : " (\(fields.joined(separator: ", ")))")
            case .changed: return "changed: \(pathString): " + fields.joined(separator: "; ")
            }
        }
    }

    public var ignoreMtime = false

    public init(ignoreMtime: Bool = false) { self.ignoreMtime = ignoreMtime }

    static func typeName(_ t: UInt32) -> String {
        switch t {
        case FileType.reg: return "file"
        case FileType.dir: return "directory"
        case FileType.lnk: return "symlink"
        case FileType.chr: return "char-device"
        case FileType.blk: return "block-device"
        case FileType.ifo: return "fifo"
        case FileType.sock: return "socket"
        default: return "unknown"
        }
    }

    /// Every entry of a source, keyed by path, with the content hash of regular files.
    public static func entries(_ source: TreeSource) throws -> [[UInt8]: Entry] {
        var out: [[UInt8]: Entry] = [:]
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        try source.walk { item in
            var digest: String?
            if item.fileType == FileType.reg && item.hardLinkTo == nil {
                var hasher = SHA256()
                try item.copyContent(buffer: buffer) { hasher.update($0) }
                digest = SHA256.hex(hasher.finalize())
            }
            out[item.path] = Entry(type: typeName(item.fileType), mode: item.permissions, uid: item.uid, gid: item.gid,
                                   size: item.hardLinkTo == nil ? item.size : 0, mtime: item.mtime, linkTarget: item.linkTarget,
                                   hardLinkTo: item.hardLinkTo, rdev: item.rdev, sha256: digest)
        }
        return out
    }

    /// The differences, in canonical path order.
    public func compare(_ a: TreeSource, _ b: TreeSource) throws -> [Difference] {
        let left = try Self.entries(a)
        let right = try Self.entries(b)
        var result: [Difference] = []
        let paths = Set(left.keys).union(right.keys).sorted(by: canonicalPrecedes)
        for path in paths {
            switch (left[path], right[path]) {
            case (let x?, nil): result.append(Difference(kind: .onlyInA, path: path, fields: [x.type]))
            case (nil, let y?): result.append(Difference(kind: .onlyInB, path: path, fields: [y.type]))
            case (let x?, let y?):
                let fields = changes(x, y)
                if !fields.isEmpty { result.append(Difference(kind: .changed, path: path, fields: fields)) }
            default: break
            }
        }
        return result
    }

    func changes(_ x: Entry, _ y: Entry) -> [String] {
        var f: [String] = []
        func text(_ bytes: [UInt8]?) -> String { bytes.map { String(decoding: $0, as: UTF8.self).debugDescription } ?? "(none)" }
        if x.type != y.type { f.append("type: \(x.type) -> \(y.type)") }
        if x.mode != y.mode { f.append("mode: 0\(String(x.mode, radix: 8)) -> 0\(String(y.mode, radix: 8))") }
        if x.uid != y.uid || x.gid != y.gid { f.append("owner: \(x.uid):\(x.gid) -> \(y.uid):\(y.gid)") }
        if x.size != y.size { f.append("size: \(x.size) -> \(y.size)") }
        if !ignoreMtime && x.mtime != y.mtime { f.append("mtime: \(x.mtime) -> \(y.mtime)") }
        if x.linkTarget != y.linkTarget { f.append("link target: \(text(x.linkTarget)) -> \(text(y.linkTarget))") }
        if x.hardLinkTo != y.hardLinkTo { f.append("hard link to: \(text(x.hardLinkTo)) -> \(text(y.hardLinkTo))") }
        if x.rdev != y.rdev { f.append("device: \(x.rdev) -> \(y.rdev)") }
        if x.sha256 != y.sha256 && x.type == y.type { f.append("content: sha256 \(x.sha256.map { String($0.prefix(16)) } ?? "-") -> \(y.sha256.map { String($0.prefix(16)) } ?? "-")") }
        return f
    }
}

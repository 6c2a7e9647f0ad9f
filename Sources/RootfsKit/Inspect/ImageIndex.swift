import Foundation

/// Every item of an image's tree without content (one walk), with paths resolved the way the
/// guest resolves them (GuestTree's rules, on the image instead of a host directory): absolute
/// links start at the image's root and `..` never leaves it. `rootfs ls` and `rootfs cp` use it.
public struct ImageIndex {
    /// Items by relative path ("." the root), content readers dropped.
    public private(set) var items: [[UInt8]: TreeItem] = [:]
    /// Each directory's entry names, in walk order (bytewise sorted).
    public private(set) var children: [[UInt8]: [[UInt8]]] = [:]

    public init(_ source: TreeSource) throws {
        try source.walk { item in
            var it = item
            it.readContent = nil
            items[it.path] = it
            if !it.isRoot {
                children[Self.parent(it.path), default: []].append(Self.lastName(it.path))
            }
        }
        if items[[46]] == nil {
            throw RootfsError("the tree has no root directory", hint: "the image is corrupt")
        }
    }

    public enum Resolution: Equatable {
        /// The item's relative path in the index.
        case found([UInt8])
        /// `guestPath`: how far resolution got.
        case missing(guestPath: [UInt8])
        case notDirectory(guestPath: [UInt8])
        case loop
    }

    /// Resolves an absolute or relative guest path (bytes) inside the image.
    public func resolve(_ guestPath: [UInt8], followLast: Bool = true) -> Resolution {
        var pending = Self.components(guestPath)
        var resolved: [[UInt8]] = []
        var hops = 0
        while !pending.isEmpty {
            let name = pending.removeFirst()
            if name == [46] || name.isEmpty { continue }
            if name == [46, 46] { _ = resolved.popLast(); continue }
            let here = Self.key(resolved)
            guard items[here]?.fileType == 0o040000 else { return .notDirectory(guestPath: Self.shown(resolved)) }
            let candidate = resolved + [name]
            guard let item = items[Self.key(candidate)] else { return .missing(guestPath: Self.shown(candidate)) }
            if item.fileType == 0o120000 && (followLast || !pending.isEmpty) {
                hops += 1
                if hops > 40 { return .loop }
                let target = item.linkTarget ?? []
                if target.first == UInt8(ascii: "/") { resolved = [] }
                pending = Self.components(target) + pending
                continue
            }
            resolved = candidate
        }
        return .found(Self.key(resolved))
    }

    /// The item at a resolved path, or a clear error naming `image` and the path asked for.
    public func require(_ guestPath: [UInt8], image: String, followLast: Bool = true) throws -> TreeItem {
        let asked = displayPath(guestPath)
        switch resolve(guestPath, followLast: followLast) {
        case .found(let key): return items[key]!
        case .missing(let guest):
            throw RootfsError("\(image) has no \(asked)" + (guest == Self.absolute(guestPath) ? "" : " (it resolves to \(displayPath(guest)), which does not exist in the image)"),
                              hint: "`rootfs ls \(shellQuote(image)) /` lists the image; links are resolved inside the image")
        case .notDirectory(let guest):
            throw RootfsError("\(image): \(displayPath(guest)) is not a directory, so \(asked) does not exist")
        case .loop:
            throw RootfsError("\(image): \(asked) is a loop of symbolic links")
        }
    }

    /// The size of a regular file's content (a hard link's extra names carry 0 themselves).
    public func contentSize(_ item: TreeItem) -> Int64 {
        if let first = item.hardLinkTo { return items[first]?.size ?? 0 }
        return item.size
    }

    static func components(_ path: [UInt8]) -> [[UInt8]] {
        path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true).map(Array.init)
    }

    static func key(_ parts: [[UInt8]]) -> [UInt8] {
        parts.isEmpty ? [46] : Array(parts.joined(separator: [UInt8(ascii: "/")]))
    }

    static func shown(_ parts: [[UInt8]]) -> [UInt8] { [UInt8(ascii: "/")] + Array(parts.joined(separator: [UInt8(ascii: "/")])) }

    /// The absolute guest form of a path as typed ("etc" is "/etc").
    static func absolute(_ path: [UInt8]) -> [UInt8] { shown(components(path)) }

    static func parent(_ path: [UInt8]) -> [UInt8] {
        guard let slash = path.lastIndex(of: UInt8(ascii: "/")) else { return [46] }
        return Array(path[..<slash])
    }

    static func lastName(_ path: [UInt8]) -> [UInt8] {
        guard let slash = path.lastIndex(of: UInt8(ascii: "/")) else { return path }
        return Array(path[(slash + 1)...])
    }
}

extension String {
    func leftPadded(to width: Int, with pad: Character) -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}

import Foundation

/// A plain, uncompressed POSIX (pax restricted) tar of a tree: what `docker import` /
/// `podman import` read. Deliberately minimal (entries in the walker's order, owners and
/// modes as on disk, mtimes clamped to SOURCE_DATE_EPOCH); a general tar output format
/// can replace it.
public struct TarWriter: Sendable {
    public var epoch: Int?

    public init(epoch: Int? = nil) { self.epoch = epoch }

    @discardableResult
    public func write(tree root: String, to output: String) throws -> WriteStats {
        try TreeArchiver(format: .paxRestricted, compression: .none, level: nil, epoch: epoch).write(tree: root, to: output)
    }
}

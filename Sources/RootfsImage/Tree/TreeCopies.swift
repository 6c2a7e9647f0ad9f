import RootfsSupport
import Foundation

// Directory copies of a tree source. They live beside the extractor (not in
// TreeSource.swift) so that the source type does not depend on its own extractor.
extension TreeSource {
    /// A directory holding the tree, for tools that only read directories
    /// (mke2fs -d, mkfs.erofs, mksquashfs): the directory itself, or the archive
    /// extracted safely into a temporary directory next to `near`, removed by `cleanup`.
    public func materialized(near: String) throws -> (directory: String, cleanup: @Sendable () -> Void) {
        switch self {
        case .directory(let root):
            return (root, {})
        case .archive, .ext4, .image:
            let work = try FS.makeSiblingTemporaryDirectory(for: near)
            do {
                var extractor = TreeExtractor(destination: work + "/tree")
                extractor.ownerAccess = !extractor.keepOwnership
                extractor.devicePlaceholders = !extractor.keepOwnership
                try extractor.extract(self)
            } catch {
                FS.remove(work)
                throw error
            }
            return (work + "/tree", { FS.remove(work) })
        }
    }

    /// A tree source with overlays applied: the source itself when there are none,
    /// else a temporary copy (removed by the returned clean-up) with the overlays laid over it.
    /// (`rootfs image` and `rootfs initrd`; a build applies its overlays in its compose stage.)
    public static func composed(_ tree: String, overlays specs: [OverlaySpec],
                                near output: String) throws -> (source: TreeSource, cleanup: @Sendable () -> Void) {
        let source = try TreeSource.open(tree)
        if specs.isEmpty { return (source, {}) }
        let work = try FS.makeSiblingTemporaryDirectory(for: output)
        do {
            try TreeExtractor(destination: work + "/tree").extract(source)
            try OverlayApplier(tree: GuestTree(root: work + "/tree")).apply(specs)
        } catch {
            FS.remove(work)
            throw error
        }
        return (.directory(work + "/tree"), { FS.remove(work) })
    }
}

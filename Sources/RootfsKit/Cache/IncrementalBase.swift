import Foundation

/// Incremental extra packages: a tree cache entry that differs from a build only in having
/// fewer extra packages (its EXTRA_PKG a subset of the build's) is a base the build can start
/// from, when the distro's hook defines `extend_rootfs ROOTFS_DIR PACKAGES...`: the base is
/// restored and only the missing packages are installed into it. The result is stored under
/// the build's own key, like a full build's tree.
public struct IncrementalBase: Sendable, Equatable {
    /// The base entry and its inputs (what `TreeCache.restore` takes).
    public var inputs: TreeCacheInputs
    /// The build's extra packages the base lacks, in the build's order.
    public var adding: [String]

    public var key: String { inputs.key }

    /// The variables that carry EXTRA_PKG into config.sh: they differ whenever the extras do.
    static let extraVariables: Set<String> = ["EXTRA_PKGS", "EXTRA_PKG"]

    /// The best base for `inputs` among the cache's entries: every input equal but the extra
    /// packages, the entry's extras a strict subset of the build's; the one with the most extras
    /// (the fewest to add) wins, then the smaller key (a fixed choice). Nil when there is none.
    public static func find(for inputs: TreeCacheInputs, in cache: TreeCache) -> IncrementalBase? {
        let wanted = Set(inputs.extraPackages)
        guard !wanted.isEmpty else { return nil }
        var best: IncrementalBase?
        for (_, record) in cache.records() {
            guard record.key == record.inputs.key, FS.fileSize(cache.tarPath(record.key)) == record.bytes else { continue }
            let candidate = record.inputs
            let have = Set(candidate.extraPackages)
            guard have.isSubset(of: wanted), have.count < wanted.count, sameApartFromExtras(candidate, inputs) else { continue }
            let base = IncrementalBase(inputs: candidate, adding: inputs.extraPackages.filter { !have.contains($0) })
            if best.map({ base.adding.count < $0.adding.count }) ?? true { best = base }
        }
        return best
    }

    /// Every input but the extra packages (and the config variables that carry them) is equal.
    static func sameApartFromExtras(_ a: TreeCacheInputs, _ b: TreeCacheInputs) -> Bool {
        var a = a, b = b
        a.extraPackages = []
        b.extraPackages = []
        for name in extraVariables {
            a.config[name] = nil
            b.config[name] = nil
        }
        return a == b
    }
}

import Foundation

/// The hook receives `$1` = WORK/rootfs inside a fresh work directory that only
/// rootfs writes to. Anything new next to the tree after the hook ran was
/// written outside ROOTFS_DIR (`touch "$1/../escape"`): the build is refused
/// (the work directory and what the hook left in it are removed).
struct HookConfinement {
    var work: String
    var allowed: Set<String>

    init(work: String, allowed: Set<String>) {
        self.work = work
        self.allowed = allowed
    }

    func check(distro: Distro) throws {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: work)) ?? []
        let strays = names.filter { !allowed.contains($0) }.sorted()
        guard !strays.isEmpty else { return }
        throw RootfsError("build_rootfs() of distro '\(distro.name)' wrote outside its rootfs directory: \(strays.map { work + "/" + $0 }.joined(separator: ", "))",
                          hint: "a hook writes only under the directory it receives as $1 (ROOTFS_DIR); fix build_rootfs() in \(distro.libraryPath). Nothing was written to the outputs")
    }
}

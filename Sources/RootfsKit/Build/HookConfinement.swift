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
        // A bind mount of a host directory or a /proc left in the tree would be archived or
        // walked: refused with their list (the work directory's removal detaches them, never
        // deleting through them). Kernel paths from mountinfo, compared as bytes.
        if let real = FS.realDirectoryPath(work) {
            let mounts = FS.mountPoints(underReal: real)
            if !mounts.isEmpty {
                let shown = mounts.map { String(decoding: $0, as: UTF8.self) }
                throw RootfsError("build_rootfs() of distro '\(distro.name)' left \(mounts.count) file system(s) mounted in its tree: \(shown.joined(separator: ", "))",
                                  hint: "unmount what the hook mounts (umount in build_rootfs() of \(distro.libraryPath)) before it returns; nothing was written to the outputs",
                                  details: shown)
            }
        }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: work)) ?? []
        let strays = names.filter { !allowed.contains($0) }.sorted()
        guard !strays.isEmpty else { return }
        throw RootfsError("build_rootfs() of distro '\(distro.name)' wrote outside its rootfs directory: \(strays.map { work + "/" + $0 }.joined(separator: ", "))",
                          hint: "a hook writes only under the directory it receives as $1 (ROOTFS_DIR); fix build_rootfs() in \(distro.libraryPath). Nothing was written to the outputs")
    }
}

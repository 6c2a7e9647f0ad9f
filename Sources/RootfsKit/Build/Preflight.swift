import Foundation

/// The inputs a build reads only after its hook (overlays, files, the kernel, the owners a
/// writer needs), checked before the hook runs: a problem found here costs nothing, the
/// same problem found by a writer costs the whole bootstrap. BuildPlanner collects these with
/// its other problems; Builder.run refuses a plan with any, all of them in one error.
public enum Preflight {
    /// The outputs that boot a kernel: `--kernel FILE`, else the tree's /boot/vmlinuz*.
    public static let kernelFormats: Set<OutputFormat> = [.kernelInitrd, .isoBios, .uki, .isoEFI, .isoEFIInitrd, .isoHybrid,
                                                          .rawEFI, .qcow2EFI, .kernelSquashfs, .kernelErofs, .tarKernelInitrd]
    /// Outputs whose tool cannot give a rootless build's files their owners (mksquashfs has no
    /// fix-up afterwards, unlike mke2fs and mkfs.erofs: Ext4Fixup, ErofsOwnership).
    public static let rootOnlyFormats: Set<OutputFormat> = [.squashfs, .kernelSquashfs]

    /// What is wrong with the inputs of `formats` (the asked and the distro's default outputs).
    static func inputProblems(_ options: BuildOptions, formats: [OutputFormat]) -> [RootfsError] {
        var problems: [RootfsError] = []
        for spec in options.overlays {
            switch spec {
            case .overlay(let path) where !FS.exists(path):
                problems.append(RootfsError("--overlay \(path) does not exist", hint: "give a directory or a tar archive"))
            case .file(let guest, let host) where !FS.exists(host):
                problems.append(RootfsError("--file \(String(decoding: guest, as: UTF8.self))=\(host): the host file \(host) does not exist",
                                            hint: "give an existing host file or directory after '=' (--file GUEST_PATH=HOST_PATH)"))
            default: break
            }
        }
        let booting = formats.filter(kernelFormats.contains)
        if let kernel = options.imageOptions.kernel, !booting.isEmpty, !FS.isRegularFile(kernel) {
            problems.append(RootfsError("--kernel \(kernel) is not a file (\(FS.exists(kernel) ? "not a regular file" : "no such file")); "
                                        + "\(booting.map(\.rawValue).joined(separator: ", ")) boot\(booting.count == 1 ? "s" : "") it",
                                        hint: "give the path of a kernel image (vmlinuz/bzImage), or leave --kernel out to take the tree's /boot/vmlinuz*"))
        }
        if options.transport == .tar, let lossy = formats.first(where: rootOnlyFormats.contains) {
            problems.append(RootfsError("--format \(lossy.rawValue) needs root: mksquashfs cannot give a rootless build's files their owners (root:shadow, setuid root...), so the image would be wrong",
                                        hint: "run the build as root, or write a format that keeps the owners without root: erofs, kernel+erofs, tar, initrd, raw/qcow2 (ext4, erofs or xfs)"))
        }
        return problems
    }

    /// The problems as one error: the problem itself when there is one, else a list of all.
    public static func error(_ problems: [RootfsError]) -> RootfsError? {
        guard problems.count > 1 else { return problems.first }
        var details: [String] = []
        for (index, problem) in problems.enumerated() {
            details.append("\(index + 1). \(problem.message)")
            details += problem.details.map { "     " + $0 }
            if let hint = problem.hint { details.append("   hint: " + hint) }
        }
        return RootfsError("\(problems.count) problems stop this build (nothing was run):", details: details)
    }

    /// Right after the hook (and the overlays), before any writer: the outputs that boot a kernel
    /// need one in the tree when no --kernel is given. A distro's hook decides what it installs,
    /// so this is the first moment it is known.
    static func requireKernel(_ plan: BuildPlan, source: TreeSource) throws {
        guard plan.imageOptions.kernel == nil else { return }
        let booting = plan.outputs.map(\.format).filter(kernelFormats.contains)
        guard !booting.isEmpty, try KernelLocator.candidate(in: source) == nil else { return }
        throw RootfsError("\(booting.map(\.rawValue).joined(separator: ", ")) need\(booting.count == 1 ? "s" : "") a kernel, and the tree build_rootfs made has none in /boot (checked before any output was written)",
                          hint: "pass --kernel FILE, or install a kernel package in the guest (--extra-pkg, e.g. linux-image-amd64 on Debian)")
    }
}

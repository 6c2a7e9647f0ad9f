import ArgumentParser
import Foundation
import RootfsKit

extension BootCommand {
    /// `--kata`: Kata's parameters and devices, and a stage-1 initrd carrying the root's modules when
    /// the kernel has them as modules and no --initrd was given. Returns the initrd to remove afterwards.
    func kataOptions(_ options: inout BootOptions) async throws -> String? {
        guard kata else {
            if modules != nil { throw ValidationError("--modules is for --kata's stage-1 initrd: add --kata") }
            if kataRoot != nil { throw ValidationError("--kata-root is how --kata attaches the image: add --kata") }
            return nil
        }
        let kataBoot = KataBoot.forImage(options.image, root: kataRoot ?? .virtioBlk)
        options.kata = kataBoot
        guard options.initrd == nil, let kernel = options.kernel else { return nil }
        guard let dir = modules ?? KataStageOneInitrd.modulesDirectory(nextTo: kernel) else { return nil }
        let vetted = try KernelModules(directory: dir)
        let busybox = ["/bin/busybox", "/usr/bin/busybox"].first(where: FS.isRegularFile) ?? "/bin/busybox"
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("rootfs-kata-stage1-\(getpid()).initrd").path
        try await KataStageOneInitrd(modules: vetted, busybox: busybox).write(to: path, moduleNames: kataBoot.moduleNames)
        options.initrd = path
        return path
    }
}

extension KataBoot.Root: ExpressibleByArgument {}

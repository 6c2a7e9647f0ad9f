import ArgumentParser
import Foundation
import RootfsKit

extension BootCommand {
    /// `--kata`: Kata's parameters and devices, and a stage-1 initrd carrying the root's modules when
    /// the kernel has them as modules and no --initrd was given. Returns the initrd to remove afterwards.
    func kataOptions(_ options: inout BootOptions) async throws -> String? {
        guard kata else {
            if kataRoot != nil { throw ValidationError("--kata-root is how --kata attaches the image: add --kata") }
            return nil
        }
        let kataBoot = KataBoot.forImage(options.image, root: kataRoot ?? .virtioBlk)
        options.kata = kataBoot
        guard options.initrd == nil, let kernel = options.kernel else { return nil }
        guard let dir = modules ?? KataStageOneInitrd.modulesDirectory(nextTo: kernel) else { return nil }
        return try await stageOneInitrd(&options, modulesDirectory: dir, moduleNames: kataBoot.moduleNames)
    }

    /// A bare squashfs or erofs image (LinuxKit's kernel+squashfs, kernel+erofs): Debian's kernels
    /// have both as modules, so the stage-1 initrd loads the root's module when the modules are
    /// found (--modules, or next to the kernel). Returns the initrd to remove afterwards.
    func rootModuleOptions(_ options: inout BootOptions) async throws -> String? {
        if kataRoot != nil { throw ValidationError("--kata-root is how --kata attaches the image: add --kata") }
        guard options.initrd == nil, FileManager.default.isReadableFile(atPath: options.image),
              case .disk(let disk) = try await BootImageKind.detect(path: options.image),
              disk.table == .none, disk.filesystem == .squashfs || disk.filesystem == .erofs else {
            if modules != nil { throw ValidationError("--modules is for --kata's stage-1 initrd or a squashfs/erofs root") }
            return nil
        }
        let resolved = QEMUBoot.resolve(options, kind: .disk(disk))
        guard let kernel = resolved.kernel,
              let dir = modules ?? KataStageOneInitrd.modulesDirectory(nextTo: kernel) else { return nil }
        return try await stageOneInitrd(&options, modulesDirectory: dir, moduleNames: [disk.filesystem.rawValue])
    }

    private func stageOneInitrd(_ options: inout BootOptions, modulesDirectory dir: String, moduleNames: [String]) async throws -> String {
        let vetted = try KernelModules(directory: dir)
        let busybox = ["/bin/busybox", "/usr/bin/busybox"].first(where: FS.isRegularFile) ?? "/bin/busybox"
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("rootfs-stage1-\(getpid()).initrd").path
        try await KataStageOneInitrd(modules: vetted, busybox: busybox).write(to: path, moduleNames: moduleNames)
        options.initrd = path
        return path
    }
}

extension KataBoot.Root: ExpressibleByArgument {}

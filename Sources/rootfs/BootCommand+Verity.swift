import ArgumentParser
import Foundation
import RootfsKit

extension BootCommand {
    /// A verity disk (its root-hash file found next to it, or --root-hash): checked against the
    /// image here, on the host, and booted on its dm-verity mapping. For a kernel whose dm and
    /// dm-verity are modules (its package's lib/modules next to it), a stage-1 initrd loads them
    /// and makes the mapping with `rootfs-agent dm-create`. Returns the initrd to remove afterwards.
    func verityOptions(_ options: inout BootOptions, onNote: (String) -> Void) async throws -> String? {
        guard let verity = try VerityBoot.resolve(image: image, rootHashFile: rootHash) else { return nil }
        options.verity = verity
        onNote("verity disk: root hash \(verity.parameters.rootHash) (\(verity.rootHashFile)) checked against the image; root /dev/dm-0, read-only")
        guard options.initrd == nil, let kernel = options.kernel,
              let dir = modules ?? KataStageOneInitrd.modulesDirectory(nextTo: kernel) else { return nil }
        let vetted = try KernelModules(directory: dir)
        let busybox = ["/bin/busybox", "/usr/bin/busybox"].first(where: FS.isRegularFile) ?? "/bin/busybox"
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("rootfs-verity-stage1-\(getpid()).initrd").path
        var stage = KataStageOneInitrd(modules: vetted, busybox: busybox)
        stage.deviceMapperTool = InstallLayout.agent(named: "rootfs-agent") ?? (FS.executableDirectory() ?? ".") + "/rootfs-agent"
        // erofs is a module too on such kernels (ext4 is built in): loaded when the root is erofs.
        let erofs = (try? await BootImageKind.detect(path: image))?.disk?.filesystem == .erofs
        try await stage.write(to: path, moduleNames: (kata ? KataBoot.rootModules : []) + VerityBoot.modules + (erofs ? ["erofs"] : []))
        options.initrd = path
        return path
    }
}

import Foundation
import PackagePlugin

/// `swift package --allow-writing-to-package-directory rootfs <arguments>`:
/// builds this package (rootfs, with rootfs-agent next to it, as `swift build`
/// would), then runs its own `rootfs` in the package directory with the
/// arguments unchanged, and exits with rootfs's exit status.
@main
struct RootfsPlugin: CommandPlugin {
    func performCommand(context: PluginContext, arguments: [String]) async throws {
        // The products `swift build` makes (not SwiftPM's "-tool" host copies):
        // rootfs finds the reference agent next to itself.
        let build = try packageManager.build(.all(includingTests: false),
                                             parameters: .init(configuration: .debug, logging: .concise))
        guard build.succeeded else {
            FileHandle.standardError.write(Data(build.logText.utf8))
            Diagnostics.error("building rootfs failed (see above)")
            exit(1)
        }
        guard let rootfs = build.builtArtifacts.first(where: { $0.kind == .executable && $0.url.lastPathComponent == "rootfs" }) else {
            Diagnostics.error("the build made no rootfs executable")
            exit(1)
        }
        let process = Process()
        process.executableURL = rootfs.url
        process.arguments = arguments
        // Relative paths (build/, --distros-dir) mean what they mean in the checkout.
        process.currentDirectoryURL = context.package.directoryURL
        // stdin, stdout and stderr are inherited: SwiftPM passes the output on as it comes.
        try process.run()
        process.waitUntilExit()
        let status = process.terminationStatus
        if process.terminationReason == .uncaughtSignal { exit(128 + status) }
        // The plugin's exit status becomes `swift package`'s.
        exit(status)
    }
}

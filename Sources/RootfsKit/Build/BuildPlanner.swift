import Foundation

/// Decides a build before anything runs: options, environment and the distro's
/// config.sh become a `BuildPlan` (the outputs and their options, the hook's
/// environment, the executor, what a dry run shows and what would stop the build).
public struct BuildPlanner: Sendable {
    public var runner = ProcessRunner()

    public init(runner: ProcessRunner = ProcessRunner()) { self.runner = runner }

    public func plan(_ options: BuildOptions) async throws -> BuildPlan {
        let env = options.environment
        let catalog = DistroCatalog.standard(distrosDirs: options.distrosDirs, environment: env)
        var fromImage: ImageReference?
        if let text = options.fromImage {
            guard let reference = try ImageReference.parse(text, option: "--from-image") else {
                throw RootfsError("--from-image \(options.fromImageLabel ?? text) is not a container image",
                                  hint: "give docker://NAME, podman://NAME, oci:DIR[:TAG] or docker-archive:FILE; for a directory or tar, use `rootfs image`")
            }
            fromImage = reference
        }
        let distro = fromImage == nil ? try catalog.find(options.distro)
            : ImageBuild.distro(name: options.distro, image: options.fromImageLabel ?? options.fromImage!)

        var extra = words(env["EXTRA_PKGS"]) + words(env["EXTRA_PKG"]) + options.extraPackages.flatMap { words($0) }
        var seen = Set<String>()
        extra = extra.filter { seen.insert($0).inserted }
        try PackageName.validate(extra, option: "--extra-pkg/EXTRA_PKG")

        var problems: [RootfsError] = []
        // What would stop the build is collected, in the build and the dry run alike: every input
        // is checked before the hook runs, and all problems are reported at once (Builder.run throws them).
        func problem(_ error: RootfsError) throws {
            problems.append(error)
        }

        var agentInit = options.agentInit || ["yes", "true", "1"].contains((env["AGENT_INIT"] ?? "").lowercased())
        let archText = options.architecture ?? env["ARCH"].flatMap { $0.isEmpty ? nil : $0 } ?? hostArchitecture()
        let architecture = try Architecture.parse(archText, option: options.architecture != nil ? "--arch" : "ARCH")
        let arch = architecture.rawValue
        var overrides = [String: String]()
        if let v = options.osVersion { try SettingValue.validateVersion(v, source: "--os-version") }
        try SettingValue.validateProxies(env)
        if let v = options.osVersion { overrides["OS_VERSION"] = v }
        overrides["AGENT_INIT"] = agentInit ? "yes" : "no"
        overrides["ARCH"] = arch
        // Kata's ubuntu hook reads DEB_ARCH; RPM and apk take ARCH itself.
        overrides["DEB_ARCH"] = architecture.debianName
        overrides["EXTRA_PKGS"] = extra.joined(separator: " ")
        overrides["EXTRA_PKG"] = extra.joined(separator: " ")
        let config = fromImage != nil ? ImageBuild.config(name: distro.name, environment: env)
            : try await ConfigEvaluator().evaluate(distro, environment: env.merging(overrides) { $1 })
        if config.initProcess == "agent" { agentInit = true }
        guard DistroConfig.initProcesses.contains(config.initProcess) else {
            throw RootfsError("\(distro.configPath): INIT_PROCESS must be systemd, agent or kata-agent, not '\(config.initProcess)'",
                              hint: "systemd starts the agent; agent (Kata's kata-agent) makes the agent /sbin/init")
        }
        if config.archExcludeList.contains(arch) {
            throw RootfsError("distro '\(distro.name)' cannot be built for \(arch): ARCH_EXCLUDE_LIST in \(distro.configPath) excludes it (ARCH_EXCLUDE_LIST=\"\(config.archExcludeList.joined(separator: " "))\")",
                              hint: "build another distro for \(arch) (see `rootfs list`), or set ARCH to an architecture the distro supports")
        }
        // config.sh computes them from the environment too (OS_VERSION=${OS_VERSION:-...}): checked as evaluated.
        try SettingValue.validateVersion(config.osVersion ?? "", source: "\(distro.configPath) (or the environment)")
        for name in SettingValue.urlNames {
            try SettingValue.validateWord(config.values[name] ?? "", name: name, source: "\(distro.configPath) (or the environment)")
            try SettingValue.validateWord(env[name] ?? "", name: name, source: "the environment")
        }
        if let bad = config.packages.first(where: { !PackageName.isValid($0) }) {
            throw RootfsError("PACKAGES in \(distro.configPath) holds an invalid package name: \(bad)")
        }
        let profile = try GuestProfileChoice.decide(kata: options.kata, rootfsOnly: options.rootfsOnly, agentPath: options.agentPath,
                                                    agentInitFlag: options.agentInit, agentInit: agentInit, environment: env)
        do { try profile.kata?.validate() } catch let error as RootfsError { try problem(error) }
        let agent: AgentSpec
        do {
            agent = try profile.agent(agentPath: options.agentPath, agentInit: agentInit, architecture: architecture, environment: env)
        } catch let error as RootfsError {
            try problem(error)
            // Dry run: show where the agent would have come from.
            let path = options.agentPath ?? env["AGENT_SOURCE_BIN"] ?? ProjectData.agent(named: "rootfs-agent") ?? ((FS.executableDirectory() ?? ".") + "/rootfs-agent")
            agent = AgentSpec(sourcePath: FS.absolute(path), guestName: env["AGENT_BIN"].flatMap { $0.isEmpty ? nil : $0 }
                              ?? (options.agentPath == nil && env["AGENT_SOURCE_BIN"] == nil ? "rootfs-agent" : "kata-agent"),
                              isInit: agentInit, isReferenceAgent: options.agentPath == nil)
        }
        // A build on this host needs HOST_TOOLS; a build in a container engine does not. The
        // executor (chosen below) refuses a host build without them, naming the flag that would work.
        let missingTools = config.missingHostTools(path: env["PATH"])

        let buildDir = FS.absolute(options.buildDirectory ?? "build/\(distro.name)")
        // -o FILE names the one --format output (mkosi's --output); -O DIR holds them all (--output-dir).
        let named = try Self.namedOutputs(options)
        let requestedFormats = named.formats
        let rootfsOption = named.output?.format == .rootfs ? named.output?.path
            : options.rootfsDir ?? env["ROOTFS_DIR"].flatMap { $0.isEmpty ? nil : $0 }
        let anyOutput = rootfsOption != nil || options.initrd != nil || options.image != nil || !requestedFormats.isEmpty
        // Every output the build names itself goes to -O DIR, the default ones too (build/<distro> without it).
        let formatDir = FS.absolute(options.outputDirectory ?? buildDir)
        let wantsRootfs = requestedFormats.contains(.rootfs)
        let rootfsDir = FS.absolute(rootfsOption ?? (wantsRootfs ? OutputFormat.rootfs.outputPath(directory: formatDir, name: distro.name) : formatDir + "/rootfs"))
        var formatOutputs: [FormatOutput] = []
        // A distro's own default outputs (DEFAULT_FORMATS, lcow's kernel+initrd and vhdx) replace
        // NAME.initrd and NAME.img when no output is asked.
        let defaultFormats: [OutputFormat] = anyOutput ? [] : try config.defaultFormats.map { (text: String) throws -> OutputFormat in
            do { return try OutputFormat.parse(text) } catch let error as RootfsError {
                throw RootfsError("DEFAULT_FORMATS of \(distro.name) names \(error.message)", hint: error.hint)
            }
        }
        let bundles = Preflight.kernelFormats
        if let needs = defaultFormats.first(where: bundles.contains), options.imageOptions.kernel == nil {
            try problem(RootfsError("\(distro.name)'s default outputs (\(defaultFormats.map(\.rawValue).joined(separator: ", "))) need a kernel for \(needs.rawValue): none was given",
                              hint: "pass --kernel FILE, or name the outputs with --format (e.g. --format initrd --format vhdx)"))
        }
        for f in requestedFormats + defaultFormats where f != .rootfs && !formatOutputs.contains(where: { $0.format == f }) {
            formatOutputs.append(FormatOutput(format: f, path: named.output.map { FS.absolute($0.path) } ?? f.outputPath(directory: formatDir, name: distro.name)))
        }
        // kernel+initrd, kernel+squashfs and kernel+erofs all write NAME-kernel and NAME-cmdline.
        let prefixed = formatOutputs.filter { [.kernelInitrd, .kernelSquashfs, .kernelErofs].contains($0.format) }
        if prefixed.count > 1 {
            throw RootfsError("\(prefixed.map(\.format.rawValue).joined(separator: " and ")) all write \(prefixed[0].path)-kernel and \(prefixed[0].path)-cmdline",
                              hint: "ask for one of them per build, and write the others with `rootfs image TREE --format F -o OTHER-NAME`")
        }
        if let d = options.outputDirectory, FS.exists(d) && !FS.isDirectory(d) {
            try problem(RootfsError("-O \(d) is not a directory", hint: "give the directory the outputs are written to (-O/--output-dir DIR), or name one output file with -o/--output FILE"))
        }
        problems += Preflight.inputProblems(options, formats: options.formats + defaultFormats)
        let classicDefaults = !anyOutput && defaultFormats.isEmpty
        let initrd = !classicDefaults ? options.initrd.map(FS.absolute) : formatDir + "/\(distro.name).initrd"
        let image = !classicDefaults ? options.image.map(FS.absolute) : formatDir + "/\(distro.name).img"
        if let path = options.initrd { try FS.requireFileOutputName(path, option: "--initrd") }
        // --image FILE: the disk format its extension names (raw without one), never raw under a .qcow2 name.
        let imageFormat = try options.image.map { try Self.diskFormat(image: $0) } ?? .raw
        if let initrd, options.initrd != nil { try FS.requireParentDirectory(of: initrd, option: "--initrd") }
        if let image, options.image != nil { try FS.requireParentDirectory(of: image, option: "--image") }
        if let lock = options.lockPath {
            // Like every output, before any work: a lock path that is a device, FIFO or link is refused.
            try FS.requireParentDirectory(of: FS.absolute(lock), option: "--lock")
            try FS.requireReplaceableOutput(FS.absolute(lock), option: "--lock")
        }
        if rootfsOption != nil {
            try FS.requireParentDirectory(of: rootfsDir, option: "--rootfs-dir")
            // A symlink, FIFO or device named by -r is refused as such, before "not empty" is asked.
            try FS.requireReplaceableOutput(rootfsDir, option: "--rootfs-dir", directory: true)
        }
        if !options.force && !FS.isMissingOrEmptyDirectory(rootfsDir) && (rootfsOption != nil || !anyOutput || wantsRootfs) {
            try problem(RootfsError("the rootfs directory \(rootfsDir) is not empty",
                              hint: "pass --force to replace it (it is replaced only once the new build succeeded), or choose another --rootfs-dir"))
        }
        if options.force && !FS.isMissingOrEmptyDirectory(rootfsDir) && (rootfsOption != nil || !anyOutput || wantsRootfs) {
            // Before the hook runs: --force replaces a tree, and a wrong -r would lose a home directory.
            do { try ForceGuard(environment: env).check(rootfsDir, anyDirectory: options.forceAnyDirectory) }
            catch let error as RootfsError { try problem(error) }
        }
        if FS.exists(rootfsDir) && !FS.isDirectory(rootfsDir) {
            throw RootfsError("\(rootfsDir) exists and is not a directory")
        }
        // One road for every output: --initrd F is (initrd, F), --image F is (raw or its extension's disk format, F), each
        // written by its format's writer with all of the image options.
        var keepRootfs = !anyOutput || rootfsOption != nil || wantsRootfs
        var outputs: [FormatOutput] = []
        if let initrd { outputs.append(FormatOutput(format: .initrd, path: initrd)) }
        if let image { outputs.append(FormatOutput(format: imageFormat, path: image, kind: "image")) }
        if options.transport == .tar && keepRootfs {
            if rootfsOption != nil || wantsRootfs {
                try problem(RootfsError("a rootfs directory with its real owners (root:shadow, setuid root...) needs root: an ordinary user cannot chown files",
                                        hint: "as an ordinary user write --format tar (the tar keeps the owners), initrd or raw; or run as root for --rootfs-dir / --format rootfs"))
            } else {
                // Default outputs, rootless: the tree is kept as a tar instead of a directory.
                keepRootfs = false
                outputs.append(FormatOutput(format: .tar, path: formatDir + "/\(distro.name).tar"))
            }
        }
        outputs += formatOutputs
        if keepRootfs { outputs.insert(FormatOutput(format: .rootfs, path: rootfsDir), at: 0) }
        // Before any work: an existing output of another kind (/dev/null, a FIFO, a symlink) is refused.
        for output in outputs {
            let option = output.format == .rootfs ? "--rootfs-dir" : output.kind == "image" ? "--image"
                : output.path == initrd && options.initrd != nil ? "--initrd"
                : named.output != nil ? "-o" : "--format \(output.format.rawValue)"
            try output.requireReplaceable(option: option)
        }
        try ImageOptions.requireVHDXFixedFits(options.imageOptions, formats: outputs.map(\.format))
        try ImageOptions.requireVerityFits(options.imageOptions, formats: outputs.map(\.format))
        try ImageOptions.requireBlockSizeFits(options.imageOptions, formats: outputs.map(\.format))
        let epoch = try sourceDateEpoch(env)
        var imageOptions = options.imageOptions
        if imageOptions.verity {
            if imageOptions.variant == nil, let v = env["BUILD_VARIANT"], !v.isEmpty {
                try VerityDisk.validateVariant(v, option: "BUILD_VARIANT")
                imageOptions.variant = v
            }
            imageOptions.architecture = arch
            // Each verity disk writes root_hash_<variant>.txt next to itself: two in one directory would overwrite each other's.
            let dirs = outputs.filter { $0.format == .raw || $0.format == .qcow2 }.map { FS.parent($0.path) }
            if Set(dirs).count < dirs.count {
                throw RootfsError("two --verity disks in one directory would write the same \(VerityDisk.rootHashFileName(variant: imageOptions.variant))",
                                  hint: "write one verity disk per directory (or per build), or convert the raw one with qemu-img afterwards")
            }
        }
        imageOptions.epoch = epoch
        imageOptions.compression = options.compression
        (imageOptions.dax, imageOptions.alignmentMiB) = try Self.kataDiskDefaults(options, profile: profile, partitionTable: imageOptions.partitionTable)

        var hookEnv = overrides
        for (key, value) in config.values where hookEnv[key] == nil { hookEnv[key] = value }
        hookEnv["OS_VERSION"] = config.osVersion ?? ""
        hookEnv["PACKAGES"] = config.packages.joined(separator: " ")
        hookEnv["REPO_URL"] = config.repoURL ?? ""
        hookEnv["AGENT_INIT"] = agentInit ? "yes" : "no"
        hookEnv["INIT_PROCESS"] = agentInit ? "agent" : config.initProcess
        hookEnv["CONFIG_DIR"] = distro.directory
        hookEnv.merge(KataCallerEnvironment.variables(for: distro)) { mine, _ in mine }
        // Kata's names for the agent binary.
        hookEnv["AGENT_BIN"] = agent.guestName
        hookEnv["BIN_AGENT"] = agent.guestName
        if let debug = env["DEBUG"], !debug.isEmpty { hookEnv["DEBUG"] = debug }
        // A hook in a container gets only the plan's environment: without this, mmdebstrap there
        // would stamp the build day into /etc/shadow and the logs, and container builds would
        // not be reproducible while host builds are.
        if let epoch { hookEnv["SOURCE_DATE_EPOCH"] = String(epoch) }

        // --locked: the lock's exact versions are the hook's whole package list (name=version for
        // apt and apk, name-version for dnf), in place of PACKAGES and EXTRA_PKG.
        var locked: PackageLock?
        if let path = options.lockedPath {
            let lock = try PackageLock.read(FS.absolute(path))
            try lock.check(distro: distro.name, osVersion: config.osVersion ?? "", architecture: arch, source: path)
            hookEnv["PACKAGES"] = lock.specifications.joined(separator: " ")
            hookEnv["EXTRA_PKGS"] = ""
            hookEnv["EXTRA_PKG"] = ""
            locked = lock
        }

        // The package cache shared by builds: a warning, not a failure, when it cannot be used.
        let cache = CacheDirectory.resolve(option: options.cacheDirectory, environment: env)
        let packageCache = cache.packageDirectory(osName: config.osName ?? distro.name, osVersion: config.osVersion ?? "",
                                                  architecture: arch)
        var cacheWarnings: [String] = []
        var usedPackageCache: String?
        if options.dryRun {
            // A dry run makes nothing: it names the cache and uses it in plan_rootfs only when it is there.
            usedPackageCache = packageCache
            if FS.isDirectory(packageCache) { hookEnv["ROOTFS_PACKAGE_CACHE"] = packageCache }
        } else if let why = CacheDirectory.prepare(packageCache) {
            cacheWarnings.append("the package cache is not used: \(why) (--cache-dir, ROOTFS_CACHE_DIR); building without it")
        } else {
            usedPackageCache = packageCache
            hookEnv["ROOTFS_PACKAGE_CACHE"] = packageCache
        }

        var plan = BuildPlan(distro: distro, config: config, architecture: arch, agent: agent, extraPackages: extra,
                             rootfsDirectory: rootfsDir, force: options.force, compression: options.compression,
                             buildDirectory: buildDir, logPath: buildDir + "/build.log", hookEnvironment: hookEnv,
                             epoch: epoch, outputs: outputs, overlays: options.overlays, imageOptions: imageOptions)
        plan.missingHostTools = missingTools
        // Another architecture's binaries run through qemu-user (binfmt_misc): what is there, what would be set up.
        plan.emulation = ForeignEmulation.plan(for: architecture)
        if let missing = plan.emulation?.missing { try problem(missing) }
        plan.locked = locked
        plan.lockPath = options.lockPath.map(FS.absolute)
        plan.cache = cache
        plan.packageCache = usedPackageCache
        plan.cacheWarnings = cacheWarnings
        plan.profile = profile
        // Host or builder container; a host without the distro's tools is refused with the flag that would work.
        do {
            if let fromImage {
                plan.hookExecutor = .image(fromImage, label: distro.searchDirectory.path)
            } else {
                plan.hookExecutor = try await hookExecutor(options, distro: distro, config: config, architecture: arch)
            }
        } catch let error as RootfsError {
            try problem(error)
        }
        if options.manifest || options.sbom {
            // Next to the first file output, named after it; else next to the rootfs directory.
            let base = plan.fileOutputs.first?.documentBase ?? rootfsDir
            plan.manifestPath = base + ".manifest.json"
            if options.sbom { plan.sbomPath = base + ".spdx.json" }
            plan.toolCommit = await ProjectData.buildCommit(environment: env)
        }
        plan.transport = options.transport
        try await decideTreeCache(&plan, options: options, cache: cache)
        // plan_rootfs() checks the hook's settings (a missing REPO_URL...) before anything is written.
        do {
            // The user build_rootfs runs as: root in a builder container (also when the engine asked
            // for is the problem: the plan is still the container's), else this process's.
            let choice = options.engine ?? EngineChoice.fromEnvironment(env)
            let inContainer = !plan.hookExecutor.isHost || choice == .docker || choice == .podman
            if fromImage == nil { (plan.hookPlan, plan.hookWarnings) = try await hookPlan(plan, hookUID: inContainer ? 0 : geteuid()) }
        } catch let error as RootfsError {
            try problem(error)
        }
        plan.problems = problems
        plan.recordedConfig = options.recordedConfig?.resolved(with: plan)
        return plan
    }

    /// The tree cache's inputs and lookup (TreeCacheInputs holds every input of the key).
    func decideTreeCache(_ plan: inout BuildPlan, options: BuildOptions, cache: CacheDirectory) async throws {
        if options.noCache { plan.treeCacheOutcome.set(.init(result: "off", key: "", why: ["--no-cache"])); return }
        // Checked as the package cache is: an unusable directory is a warning, and the build goes on without it.
        if !options.dryRun, let why = CacheDirectory.prepare(cache.root + "/trees") {
            plan.cacheWarnings.append("the tree cache is not used: \(why) (--cache-dir, ROOTFS_CACHE_DIR); building without it")
            plan.treeCacheOutcome.set(.init(result: "off", key: "", why: ["the cache directory cannot be used: \(why)"]))
            return
        }
        if case .image = plan.hookExecutor {
            // The image's layers are read in process in seconds: there is no hook to skip.
            plan.treeCacheOutcome.set(.init(result: "off", key: "", why: ["--from-image: no hook runs"]))
            return
        }
        let distro = plan.distro, config = plan.config
        var engine = plan.hookExecutor.description
        if case .container(let build) = plan.hookExecutor { engine += " inputs \(build.image.inputsHash)" }
        let repository = await RepositoryState.read(osName: config.osName ?? distro.name, osVersion: config.osVersion ?? "",
                                                    repoURL: config.repoURL, runner: runner)
        let inputs = TreeCacheInputs(
            distro: distro.name,
            distroFiles: try TreeCacheInputs.digestFiles(in: distro.directory, extra: [distro.configPath, distro.libraryPath]),
            config: config.values, packages: plan.locked?.specifications ?? config.packages,
            extraPackages: plan.locked == nil ? plan.extraPackages : [],
            architecture: plan.architecture, engine: engine, repository: repository, epoch: plan.epoch)
        let treeCache = TreeCache(cache: cache)
        plan.treeCache = treeCache
        plan.treeCacheInputs = inputs
        if options.refresh {
            plan.treeCacheOutcome.set(.init(result: "refresh", key: inputs.key, why: ["--refresh"]))
            return
        }
        let (hit, why) = treeCache.lookup(inputs)
        plan.treeCacheOutcome.set(.init(result: hit ? "hit" : "miss", key: inputs.key, why: why))
        if !hit { await decideIncremental(&plan, inputs: inputs, treeCache: treeCache, why: why) }
    }

    /// A miss whose only difference from a cached entry is more extra packages: incremental when
    /// the distro's hook defines extend_rootfs(), else a full build that says why.
    func decideIncremental(_ plan: inout BuildPlan, inputs: TreeCacheInputs, treeCache: TreeCache, why: [String]) async {
        guard let base = IncrementalBase.find(for: inputs, in: treeCache) else { return }
        let from = "only the extra packages differ from entry \(base.key.prefix(16)) (it lacks \(base.adding.joined(separator: " ")))"
        // Rootless, the tree's owners live in the hook's tar, and extend_rootfs installs with chroot (root only).
        guard plan.transport != .tar else {
            plan.treeCacheOutcome.set(.init(result: "miss", key: inputs.key, why: why + [from + ", but a rootless build cannot extend it: a full build"]))
            return
        }
        guard await definesExtendRootfs(plan) else {
            plan.treeCacheOutcome.set(.init(result: "miss", key: inputs.key, why: why + [
                from + ", but \(plan.distro.libraryPath) defines no extend_rootfs(): a full build"]))
            return
        }
        plan.incrementalBase = base
        plan.treeCacheOutcome.set(.init(result: "incremental", key: inputs.key, why: [from + ": extend_rootfs adds them"],
                                        base: base.key, adding: base.adding))
    }

    /// Whether the distro's rootfs_lib.sh (as sourced after config.sh) defines extend_rootfs().
    func definesExtendRootfs(_ plan: BuildPlan) async -> Bool {
        let command = ToolCommand("bash", ["--noprofile", "--norc", "-c", HookLibrary.extendProbeScript, "rootfs-probe",
                                           plan.distro.configPath, plan.distro.libraryPath],
                                  environment: plan.hookEnvironment, workingDirectory: plan.distro.directory)
        return (try? await runner.capture(command)) != nil
    }

    /// Runs the distro's optional plan_rootfs(): the commands build_rootfs would
    /// run, printed without running them. Nil when the distro has none.
    func hookPlan(_ plan: BuildPlan, hookUID: uid_t) async throws -> ([String]?, [String]) {
        var env = plan.hookEnvironment
        env["ROOTFS_DIR"] = plan.hookTreePlaceholder
        // What HookStage gives build_rootfs: ROOTFS_TAR for a rootless build (its tree comes back as a tar).
        if plan.transport == .tar { env["ROOTFS_TAR"] = FS.parent(plan.hookTreePlaceholder) + "/rootfs.tar" }
        // plan_rootfs runs here, build_rootfs perhaps as another user (root in a builder container).
        env["ROOTFS_HOOK_UID"] = String(hookUID)
        let command = ToolCommand("bash", ["--noprofile", "--norc", "-c", HookLibrary.planScript, "rootfs-plan",
                                           plan.distro.configPath, plan.distro.libraryPath, plan.hookTreePlaceholder],
                                  environment: env, workingDirectory: plan.distro.directory)
        do {
            let output = try await runner.capture(command)
            let warnings = output.standardError.split(separator: "\n").map(String.init)
                .filter { $0.hasPrefix("WARNING: ") }.map { String($0.dropFirst("WARNING: ".count)) }
            return (output.standardOutput.split(separator: "\n").map(String.init), warnings)
        } catch let failure as ToolFailure {
            if failure.status == .exited(3) { return (nil, []) }
            let errors = failure.outputTail.filter { $0.hasPrefix("ERROR: ") }.map { String($0.dropFirst("ERROR: ".count)) }
            // A hook's own `hint` (hook-helpers.sh) says best what to do.
            let hint = failure.outputTail.last { $0.hasPrefix("HINT: ") }.map { String($0.dropFirst("HINT: ".count)) }
            throw RootfsError("distro '\(plan.distro.name)' refuses this build: \(errors.first ?? "plan_rootfs() failed (\(failure.status))")",
                              hint: hint ?? "change the setting named above (environment or \(plan.distro.configPath)); plan_rootfs() is in \(plan.distro.libraryPath)",
                              details: errors.isEmpty ? failure.outputTail : Array(errors.dropFirst()))
        }
    }

    /// Host or container: --engine / --docker / --podman, else USE_DOCKER / USE_PODMAN, else the host.
    /// A host that lacks the distro's HOST_TOOLS is refused with the flag that would work.
    func hookExecutor(_ options: BuildOptions, distro: Distro, config: DistroConfig,
                      architecture: String) async throws -> HookExecutor {
        let env = options.environment
        let choice = options.engine ?? EngineChoice.fromEnvironment(env) ?? .host
        let missing = config.missingHostTools(path: env["PATH"])
        let kind: ContainerEngine.Kind
        switch choice {
        case .docker: kind = .docker
        case .podman: kind = .podman
        case .host, .auto:
            if missing.isEmpty { return .host }
            let answering = await ContainerEngine.firstAnswering(environment: env, runner: runner)
            if choice == .auto, let answering {
                kind = answering.kind
                break
            }
            let what = "distro '\(distro.name)' needs \(missing.joined(separator: ", ")) on this host (HOST_TOOLS in \(distro.configPath), or run by its hook)"
            if let answering {
                throw RootfsError(what + ", which lacks it",
                                  hint: "\(answering.kind.displayName) answers here: add \(answering.kind.flag) to build inside a builder container, "
                                      + "or install the tools on this host")
            }
            throw RootfsError(what + ", which lacks it, and no container engine answers",
                              hint: "install the tools on this host, or install Docker or Podman and add --docker or --podman")
        }
        let engine = ContainerEngine.forHost(kind, environment: env)
        return .container(try await ContainerBuild.make(engine: engine, distro: distro, config: config,
                                                        architecture: architecture, builderBase: options.builderBase,
                                                        environment: env, runner: runner))
    }

    /// Kata's image_builder.sh defaults for disk images: the DAX header (SKIP_DAX_HEADER=no) and
    /// IMAGE_SIZE_ALIGNMENT_MB=128 under the Kata profile. The flags win, then the variables; the
    /// variable IMAGE_SIZE_ALIGNMENT_MB counts for every build. Kata's layout is MBR only, so a
    /// GPT or bare disk gets the header only when --dax asks (and is then refused by the writer),
    /// and so does a --verity disk.
    static func kataDiskDefaults(_ options: BuildOptions, profile: GuestProfileChoice,
                                 partitionTable: PartitionTable) throws -> (dax: Bool, alignmentMiB: Int?) {
        let env = options.environment
        let kata = profile.kata != nil
        let skip = env["SKIP_DAX_HEADER"].map { ["yes", "true", "1"].contains($0.lowercased()) } ?? false
        // Kata's measured (verity) images are built with SKIP_DAX_HEADER=yes: --verity turns the default off.
        let dax = options.daxHeader ?? (kata && !skip && partitionTable == .mbr && !options.imageOptions.verity)
        let fromEnvironment = try env["IMAGE_SIZE_ALIGNMENT_MB"].flatMap { $0.isEmpty ? nil : $0 }
            .map { try DiskImageWriter.alignmentMiB(parsing: $0, from: "IMAGE_SIZE_ALIGNMENT_MB") }
        return (dax, options.imageOptions.alignmentMiB ?? fromEnvironment ?? (kata ? 128 : nil))
    }

    private func words(_ s: String?) -> [String] {
        (s ?? "").split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "," }).map(String.init)
    }
}

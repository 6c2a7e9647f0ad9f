import Foundation

/// `rootfs build --dry-run --json`: the plan as data (what the text dry run shows as
/// sections): the resolved configuration, the outputs, the engine and the problems.
public struct BuildPlanDocument: Encodable, Sendable {
    public struct Config: Encodable, Sendable {
        public var distro: String
        /// Where the distro was found (its directory; an image build: the image).
        public var directory: String
        public var foundVia: String
        public var osName: String
        public var osVersion: String
        public var architecture: String
        public var packages: [String]
        public var extraPackages: [String]
        public var initProcess: String
        /// The Kata guest profile (false: the distro tree with the agent, or --rootfs-only).
        public var kata: Bool
        public var rootfsOnly: Bool
        /// config.sh's values as evaluated.
        public var values: [String: String]
    }

    public struct Output: Encodable, Sendable {
        public var kind: String
        public var format: String
        public var path: String
    }

    public struct Engine: Encodable, Sendable {
        /// host, docker, podman or image (--from-image: no hook runs).
        public var kind: String
        /// local or remote (DOCKER_HOST / CONTAINER_HOST name another machine: nothing is bind-mounted).
        public var location: String
        public var remote: String?
        public var builderImage: String?
        public var description: String
    }

    public struct Hook: Encodable, Sendable {
        /// What plan_rootfs() printed (nil: the distro has none; the commands are known only when it runs).
        public var commands: [String]?
        public var warnings: [String]
        /// The hook's environment on top of the caller's.
        public var environment: [String: String]
        public var missingHostTools: [String]
    }

    public struct Agent: Encodable, Sendable {
        public var source: String
        public var guestPath: String
        public var isInit: Bool
        public var isReferenceAgent: Bool
    }

    public struct Problem: Encodable, Sendable {
        public var message: String
        public var hint: String?
        public var details: [String]
    }

    public var dryRun = true
    public var distro: String
    public var config: Config
    public var outputs: [Output]
    public var manifest: String?
    public var sbom: String?
    public var log: String
    public var engine: Engine
    public var hook: Hook
    public var agent: Agent
    public var treeCache: TreeCacheOutcome.State
    public var problems: [Problem]

    public init(_ plan: BuildPlan) {
        distro = plan.distro.name
        config = Config(distro: plan.distro.name, directory: plan.distro.directory, foundVia: plan.distro.searchDirectory.origin.rawValue,
                        osName: plan.config.osName ?? plan.distro.name, osVersion: plan.config.osVersion ?? "",
                        architecture: plan.architecture, packages: plan.config.packages, extraPackages: plan.extraPackages,
                        initProcess: plan.agent.isInit ? "agent" : plan.config.initProcess, kata: plan.profile.kata != nil,
                        rootfsOnly: plan.profile.rootfsOnly, values: plan.config.values)
        outputs = plan.outputs.map { Output(kind: $0.kind, format: $0.format.rawValue, path: $0.path) }
        manifest = plan.manifestPath
        sbom = plan.sbomPath
        log = plan.logPath
        switch plan.hookExecutor {
        case .host:
            engine = Engine(kind: "host", location: "local", description: plan.hookExecutor.description)
        case .image:
            engine = Engine(kind: "image", location: "local", description: plan.hookExecutor.description)
        case .container(let build):
            engine = Engine(kind: build.engine.kind.rawValue, location: build.remote == nil ? "local" : "remote", remote: build.remote,
                            builderImage: build.image.tag, description: plan.hookExecutor.description)
        }
        hook = Hook(commands: plan.hookPlan, warnings: plan.hookWarnings, environment: plan.hookEnvironment,
                    missingHostTools: plan.missingHostTools)
        agent = Agent(source: plan.agent.sourcePath, guestPath: plan.agent.guestPath, isInit: plan.agent.isInit,
                      isReferenceAgent: plan.agent.isReferenceAgent)
        treeCache = plan.treeCacheOutcome.value
        problems = plan.problems.map { Problem(message: $0.message, hint: $0.hint, details: $0.details) }
    }
}

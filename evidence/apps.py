from django.apps import AppConfig


class EvidenceConfig(AppConfig):
    name = "evidence"
    # What the moderators group may do here (accounts.services.moderators_group_sync):
    # curate benchmark sets and approve label maps; look at the leaderboard entries.
    moderator_permissions = (
        "view_benchmarkset",
        "add_benchmarkset",
        "view_benchmarklabelmap",
        "add_benchmarklabelmap",
        "view_leaderboardentry",
    )

    def ready(self) -> None:
        # Registers the scoring tasks (inference queue), so services send them by name.
        from evidence import tasks  # noqa: F401
        from evidence.leaderboards import VERSION_LIVE_EVENT, on_version_live
        from marketplace.events import consumer_register

        # A version that goes live is scored on every benchmark set it fits.
        consumer_register(
            name="evidence.leaderboard_scores", types=[VERSION_LIVE_EVENT], handler=on_version_live
        )

"""marble-rewards: the first-party reward plugins of marble-rl.

PickScore, HPSv2.1, the LAION aesthetic predictor, CLIPScore, an OCR reward and DDPO's JPEG
(in)compressibility. marble finds them through the ``marble.plugins`` entry point
(``marble_rewards.plugin``); build one with ``marble.host.build_reward(name, args)``.
Nothing heavy is imported here.
"""

__version__ = "0.1.0"

"""Norberg angles of canine hips: geometry, landmark files, a pelvis phantom, agreement statistics.

Submodules are imported on demand; nothing here pulls in torch.
"""
